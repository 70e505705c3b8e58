"""WABE / GAN ablation of the editing loop on the synthetic head.

The synthetic head is rendered twice with the same motion and cameras: with its skin texture (the
dataset the avatar is reconstructed from) and with face paint (the ground truth of the edit). The
avatar is reconstructed once (seed 0, the demo's schedule scaled to --recon-iterations), then
edited toward face paint with the noisy synthetic editor (`gaedit edit --editor synthetic`) in four
variants, each over several edit seeds (view order, editor noise, discriminator init):

  plain  wabe="off",    gan=False      +WABE  wabe="binary", gan=False
  +GAN   wabe="off",    gan=True       +both  wabe="binary", gan=True

Every edited avatar is rendered in-process and compared with the face-paint ground truth:
* val: the held-out camera (8, frontal) over the training timesteps (novel view);
* test: every camera over the held-out timesteps (the last 30%, self-reenactment);
* test open-mouth: the test frames whose timestep has a jaw opening (FLAME jaw_pose[t, 0], radians,
  of the data's motion) above --open-jaw (default 0.1 rad, ~30% of the generator's 0.33 rad max).
  The default --data-seed 4 is chosen so that the default 16-timestep sequence has 2 open-mouth and
  2 closed test timesteps (seed 0, the demo's, has none);
* metrics: PSNR, SSIM (gaedit_jax.metrics, as GaussianAvatars) per frame, averaged; flicker
  (temporal consistency, lower is better): for a fixed camera with renders x_t and ground truth
  y_t over consecutive held-out timesteps t, the residual r_t = x_t - y_t, and
  flicker = mean over t of mean |r_{t+1} - r_t| (over pixels and channels, images in [0, 1]),
  averaged over the cameras (per split; the table shows the test split).
"before edit" is the unedited avatar against the face-paint ground truth.

Prints a markdown table (mean ± sample std over seeds), writes OUT/results.json (per-seed raw
numbers and aggregates, rewritten after every run: --reuse skips runs already there), OUT/table.md
and OUT/grid.png (one held-out-timestep frame, frontal camera, widest jaw opening: ground truth,
before edit, each variant at the first seed), and checks the claim "WABE / GAN improve held-out
timesteps by more than the seed-to-seed spread": delta = mean test PSNR of the variant - that of
plain; "yes" when delta > max(std plain, std variant).

  python experiments/bench_edit_synthetic.py                       # full run (GPU): 4 variants x 3 seeds
  python experiments/bench_edit_synthetic.py --quick --recon-iterations 100 --edit-iterations 10 \
      --seeds 0 1 --variants plain wabe                            # CPU smoke test
  python experiments/bench_edit_synthetic.py --variants plain wabe gan both wabe_tile both_tile --jobs 3
                                                                   # 6 variants in 3 processes, one GPU
  python experiments/bench_edit_synthetic.py --variants both both_b2
      # both_b2: two views per step for half the iterations (the same number of edited views), one
      # view per device where two exist: the quality side of `gaedit edit --devices 2 --batch-size 2`

Editors and regions (--editors: variants both, frames_k1..frames_k16, region_face, command):
* frames_k<K>: `--editor frames` with K pre-edited training frames (evenly spaced), each the
  face-paint ground truth passed once through the noisy synthetic editor (seed 0), vs the per-step
  loop (both: a fresh noisy edit of the sampled view every iteration); WABE + GAN as in both;
* region_face: both with `--region face` (the synthetic editor's targets are face paint everywhere;
  only the face region is edited);
* command: both with `--editor command` running experiments/synthetic_edit_command.py (the same
  synthetic editor as a separate program, every --command-every iterations on --command-batch views).
Every run also gets, on the test split, PSNR inside the face region (the unedited avatar's rendered
region mask) to the face-paint ground truth and PSNR outside it to the unedited avatar's render
(OUT/editors.md).

  python experiments/bench_edit_synthetic.py --editors --quick --recon-iterations 60 \
      --edit-iterations 8 --seeds 0                                # CPU smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from gaedit_jax.flags import build

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np

EDITOR_KS = (1, 2, 4, 8, 16)
VARIANTS = {
  "plain": dict(wabe="off", gan=False),
  "wabe": dict(wabe="binary", gan=False),
  "gan": dict(wabe="off", gan=True),
  "both": dict(wabe="binary", gan=True),
  # the GAN's alternating mode (D on the detached render, then G): not in the default set
  "gan_std": dict(wabe="off", gan=True, gan_mode="standard"),
  "both_std": dict(wabe="binary", gan=True, gan_mode="standard"),
  # WABE's visible set per tile (the released kernel's mask density, deterministic)
  "wabe_tile": dict(wabe="binary", gan=False, wabe_visibility="tile"),
  "both_tile": dict(wabe="binary", gan=True, wabe_visibility="tile"),
  # two views per step for half the iterations (the same number of edited views): what
  # `gaedit edit --batch-size 2` does, one view per device where two devices exist
  "both_b2": dict(wabe="binary", gan=True, batch_size=2),
  # the same with every learning rate doubled (Adam moves about lr per step: the same total
  # travel in half the steps, the linear scaling rule of data-parallel training)
  "both_b2_lr2": dict(wabe="binary", gan=True, batch_size=2, lr_scale=2.0),
  # editors and regions (--editors); the frames / command variants get their folders in main
  **{f"frames_k{k}": dict(wabe="binary", gan=True, editor="frames") for k in EDITOR_KS},
  # the same with uniform view sampling (--edited-share 0): the edited frames are rarely visited
  **{f"frames_k{k}_uniform": dict(wabe="binary", gan=True, editor="frames", edited_share=0.0) for k in EDITOR_KS},
  "region_face": dict(wabe="binary", gan=True, region="face"),
  "command": dict(wabe="binary", gan=True, editor="command"),
}
EDITOR_VARIANTS = ["both", *(f"frames_k{k}" for k in EDITOR_KS), "frames_k16_uniform", "region_face", "command"]
LABELS = {
  "plain": "plain loop",
  "wabe": "+WABE",
  "gan": "+GAN",
  "both": "+both",
  "gan_std": "+GAN (standard)",
  "both_std": "+both (standard)",
  "wabe_tile": "+WABE per tile",
  "both_tile": "+both, WABE per tile",
  "both_b2": "+both, 2 views x half the iterations",
  "both_b2_lr2": "+both, 2 views x half the iterations, learning rates x2",
  **{f"frames_k{k}": f"frames editor, k={k}" for k in EDITOR_KS},
  **{f"frames_k{k}_uniform": f"frames editor, k={k}, --edited-share 0" for k in EDITOR_KS},
  "region_face": "+both, --region face",
  "command": "+both, command editor",
  "before": "before edit",
}
# table columns: (metric key, header, decimals)
COLUMNS = [
  ("val/psnr", "val PSNR", 2),
  ("val/ssim", "val SSIM", 4),
  ("test/psnr", "test PSNR", 2),
  ("test/ssim", "test SSIM", 4),
  ("test_open/psnr", "test open-mouth PSNR", 2),
  ("test_open/ssim", "test open-mouth SSIM", 4),
  ("test/flicker", "test flicker ↓", 5),
]
DEMO_SIZES = dict(width=128, height=176, num_timesteps=16, num_cameras=16)
QUICK_SIZES = dict(width=64, height=88, num_timesteps=10, num_cameras=9)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", type=Path, default=Path("bench_out/edit_synthetic"))
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="edit seeds")
  p.add_argument("--variants", nargs="+", default=["plain", "wabe", "gan", "both"], choices=list(VARIANTS))
  p.add_argument("--edit-iterations", type=int, default=None, help="default 1000 (the paper); --quick: 20")
  p.add_argument("--recon-iterations", type=int, default=None, help="default 1500 (the demo); --quick: 150")
  for k, v in DEMO_SIZES.items():
    p.add_argument("--" + k.replace("_", "-"), type=int, default=None, help=f"default {v}; --quick: {QUICK_SIZES[k]}")
  p.add_argument("--data-seed", type=int, default=4, help="seed of the synthetic motion / identity")
  p.add_argument("--open-jaw", type=float, default=0.1, help="open mouth: jaw opening above this (rad)")
  p.add_argument("--gan-weight", type=float, default=0.01, help="weight of L_D and L_G (METHOD §7: 0.01)")
  p.add_argument("--noise", type=float, default=1.0, help="strength of the synthetic editor's noise")
  p.add_argument("--lpips-weights", type=Path, default=None, help="LPIPS-VGG weights (else no LPIPS term)")
  p.add_argument("--quick", action="store_true", help="tiny sizes and few iterations (smoke test)")
  p.add_argument("--editors", action="store_true", help="the editors / regions variants (see the docstring)")
  p.add_argument("--command-every", type=int, default=10, help="command editor: --edit-every")
  p.add_argument("--command-batch", type=int, default=8, help="command editor: --edit-command-batch")
  p.add_argument("--reuse", action="store_true", help="reuse the data, the avatar and finished runs in --out")
  p.add_argument("--progress", action="store_true", help="progress bars")
  p.add_argument(
    "--jobs",
    type=int,
    default=1,
    help="edit the variants in this many processes at once (each run is small: one GPU holds "
    "several); the edit times are then measured under contention",
  )
  a = p.parse_args(argv)
  if a.editors and "--variants" not in (argv if argv is not None else sys.argv):
    a.variants = list(EDITOR_VARIANTS)
  sizes = QUICK_SIZES if a.quick else DEMO_SIZES
  for k, v in sizes.items():
    if getattr(a, k) is None:
      setattr(a, k, v)
  a.edit_iterations = a.edit_iterations or (20 if a.quick else 1000)
  a.recon_iterations = a.recon_iterations or (150 if a.quick else 1500)
  a.out = a.out.absolute()
  return a


# ------------------------------------------------------------------------------------------------
# Data and avatar (done once)
# ------------------------------------------------------------------------------------------------


def prepare_data(a) -> bool:
  """OUT/data (skin) and OUT/data_facepaint (the edit's ground truth). Returns True if (re)written."""
  from gaedit_jax.data.synthetic import SynthConfig, generate

  todo = []
  for tex, folder in (("skin", a.out / "data"), ("facepaint", a.out / "data_facepaint")):
    cfg = SynthConfig(
      out=folder,
      width=a.width,
      height=a.height,
      num_cameras=a.num_cameras,
      num_timesteps=a.num_timesteps,
      seed=a.data_seed,
      texture=tex,
      overwrite=True,
    )
    info = folder / "synth_info.json"
    want = {k: getattr(cfg, k) for k in ("width", "height", "num_cameras", "num_timesteps", "seed", "texture")}
    if a.reuse and info.exists():
      have = json.loads(info.read_text())["config"]
      if all(have.get(k) == v for k, v in want.items()):
        print(f"using the {tex} dataset in {folder}")
        continue
    print(f"writing the {tex} dataset to {folder}")
    todo.append(cfg)
  if todo:  # one pass for both textures
    generate(todo[0], progress=a.progress, also={c.texture: c.out for c in todo[1:]})
  return bool(todo)


def reconstruct_avatar(a, fresh_data: bool) -> dict:
  """OUT/model: one reconstruction (seed 0) with the demo's schedule scaled to --recon-iterations."""
  from gaedit_jax.commands.demo import DemoConfig, reconstruct_config
  from gaedit_jax.commands.reconstruct import main as reconstruct

  model = a.out / "model"
  cfgp = model / "cfg.json"
  if a.reuse and not fresh_data and cfgp.exists() and list((model / "point_cloud").glob("iteration_*")):
    if json.loads(cfgp.read_text())["config"]["iterations"] == a.recon_iterations:
      print(f"using the avatar in {model}")
      return dict(reused=True)
  n = a.recon_iterations  # the demo's schedule, tuned for 1500 iterations, in proportion
  rc = reconstruct_config(DemoConfig(seed=0, progress=a.progress), a.out / "data", model, n, tensorboard=False)
  print(f"reconstructing the avatar ({n} iterations)")
  t0 = time.perf_counter()
  res = reconstruct(rc)
  return dict(reused=False, seconds=time.perf_counter() - t0, num_gaussians=res["num_gaussians"])


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


@jax.jit
def _psnr_ssim(x, y):
  from gaedit_jax.metrics import psnr, ssim

  return psnr(x, y), ssim(x, y)


def flicker(renders: np.ndarray, gts: np.ndarray, cams: np.ndarray, ts: np.ndarray) -> float:
  """Mean over cameras of mean_t mean |r_{t+1} - r_t|, r = render - gt (see the module docstring)."""
  vals = []
  for c in np.unique(cams):
    idx = np.flatnonzero(cams == c)
    idx = idx[np.argsort(ts[idx])]
    if len(idx) >= 2:
      r = renders[idx] - gts[idx]
      vals.append(float(np.mean(np.abs(np.diff(r, axis=0)))))
  return float(np.mean(vals)) if vals else float("nan")


class Evaluator:
  """Ground truth of the val / test splits (face paint, and skin for the reconstruction) and the
  frame selections; `__call__` renders an avatar on both splits and returns its metrics."""

  def __init__(self, a, image_scale: float, white_background: bool):
    from gaedit_jax.data.dataset import AvatarDataset
    from gaedit_jax.data.layout import VAL_CAMERA

    kw = dict(image_scale=image_scale, white_background=white_background, cache_size=0)
    self.splits = {}
    for s in ("val", "test"):
      ds = AvatarDataset(a.out / "data_facepaint", s, **kw)
      skin = AvatarDataset(a.out / "data", s, **kw)
      assert np.array_equal(ds.timesteps, skin.timesteps) and np.array_equal(ds.camera_indices, skin.camera_indices), (
        "the face-paint and skin datasets list different frames (regenerate without --reuse)"
      )
      all_idx = np.arange(len(ds))
      self.splits[s] = dict(
        ds=ds, paint=np.asarray(ds.batch(all_idx).image), skin=np.asarray(skin.batch(all_idx).image)
      )
    test = self.splits["test"]["ds"]
    self.background = test.background
    self.jaw = np.asarray(test.flame_params.jaw_pose)[:, 0]
    self.open = self.jaw[test.timesteps] > a.open_jaw  # [test frames]
    if not self.open.any():
      print(
        f"warning: no held-out timestep opens the jaw above {a.open_jaw} rad (jaw "
        f"{np.round(self.jaw[np.unique(test.timesteps)], 3).tolist()}); open-mouth metrics are NaN"
      )
    # grid frame: frontal camera, the held-out timestep with the widest jaw opening
    cams = test.camera_indices
    cam = VAL_CAMERA if VAL_CAMERA in cams else int(np.unique(cams)[len(np.unique(cams)) // 2])
    on_cam = np.flatnonzero(cams == cam)
    self.grid_index = int(on_cam[np.argmax(self.jaw[test.timesteps[on_cam]])])

  def info(self) -> dict:
    t = self.splits["test"]["ds"]
    ts = np.unique(t.timesteps)
    return dict(
      test_timesteps=ts.tolist(),
      test_jaw=np.round(self.jaw[ts], 4).tolist(),
      open_test_timesteps=np.unique(t.timesteps[self.open]).tolist(),
      frames=dict(val=len(self.splits["val"]["ds"]), test=len(t), test_open=int(self.open.sum())),
      grid_frame=dict(camera=int(t.camera_indices[self.grid_index]), timestep=int(t.timesteps[self.grid_index])),
    )

  def __call__(self, avatar, model, flame, against: str = "paint") -> tuple[dict, np.ndarray]:
    """Metrics {"val/psnr": ..., "test_open/ssim": ..., "test/flicker": ...} of an avatar (baked
    FLAME model, per-timestep FLAME dict) and its render of the grid frame."""
    from gaedit_jax.avatar import render_views
    from gaedit_jax.render.types import RenderConfig

    rc = RenderConfig(sh_degree=avatar.sh_degree, wabe_k=0)  # no WABE outputs needed: faster
    m, grid = {}, None
    for s, d in self.splits.items():
      ds, gt = d["ds"], d[against]
      img = render_views(avatar, model, flame, ds.timesteps, ds.cameras, jax.numpy.asarray(self.background), rc)
      p, q = (np.asarray(v) for v in _psnr_ssim(img, gt))
      sel = {s: np.ones(len(ds), bool)}
      if s == "test":
        sel.update(test_open=self.open, test_closed=~self.open)
        grid = img[self.grid_index]
      for name, k in sel.items():
        m[f"{name}/psnr"] = float(p[k].mean()) if k.any() else float("nan")
        m[f"{name}/ssim"] = float(q[k].mean()) if k.any() else float("nan")
      m[f"{s}/flicker"] = flicker(img, gt, ds.camera_indices, ds.timesteps)
    return m, grid


# ------------------------------------------------------------------------------------------------
# Editors and regions
# ------------------------------------------------------------------------------------------------


def prepare_frames(a, k: int, editor, image_scale: float, white_background: bool) -> Path:
  """OUT/frames_k<k>: k training frames (evenly spaced) of the face paint, each through the noisy
  synthetic editor once (key 0), with the frames manifest `--editor frames` reads."""
  import jax.numpy as jnp

  from gaedit_jax.edit.editors import EditContext
  from gaedit_jax.edit.evaluation import training_frames
  from gaedit_jax.edit.external import frame_entries, write_manifest
  from gaedit_jax.io.media import save_png

  d = a.out / f"frames_k{k}"
  ds = training_frames(a.out / "data", True, image_scale=image_scale, white_background=white_background, cache_size=0)
  idx = np.unique(np.linspace(0, len(ds) - 1, min(k, len(ds))).round().astype(int))
  b = ds.batch(idx)
  ctx = EditContext.from_batch(b)
  imgs = np.asarray(editor(jax.random.key(0), jnp.asarray(b.image), jnp.asarray(b.image), ctx))
  entries = frame_entries(ds, idx)
  for e, img in zip(entries, imgs):
    save_png(d / e["file"], img)
  write_manifest(d, entries, data=str(a.out / "data"))
  return d


def command_template(a, seed: int) -> str:
  script = Path(__file__).with_name("synthetic_edit_command.py")
  return (
    f"{sys.executable} {script} --target-data {a.out / 'data_facepaint'} --noise {a.noise} --seed {seed} "
    "--iteration {iteration} {input} {output}"
  )


class RegionEval:
  """PSNR inside the face region (rendered from the unedited avatar) to the face-paint ground truth,
  and outside it to the unedited avatar's render, on the test split."""

  def __init__(self, ev, avatar, model, flame, region: str = "face"):
    import jax.numpy as jnp

    from gaedit_jax.avatar import pose, render_views
    from gaedit_jax.edit import regions as R
    from gaedit_jax.render.types import RenderConfig

    ds = ev.splits["test"]["ds"]
    self.gt = ev.splits["test"]["paint"]
    self.rc = RenderConfig(sh_degree=avatar.sh_degree, wabe_k=0)
    self.ds, self.bg = ds, jnp.asarray(ev.background)
    sel = R.RegionSelection.make(model, R.resolve_regions(model, region), avatar.binding, avatar.active, 0)
    masks = []
    for i in range(len(ds)):
      b = ds.batch([i])
      g = pose(avatar, model, flame, jnp.asarray(b.timestep))
      masks.append(np.asarray(R.region_image_mask(g, sel.core, b.camera, self.rc))[0])
    self.mask = np.stack(masks)[..., None] > 0.5  # [N,H,W,1]
    self.before = render_views(avatar, model, flame, ds.timesteps, ds.cameras, self.bg, self.rc)

  def __call__(self, avatar, model, flame) -> dict:
    from gaedit_jax.avatar import render_views

    img = render_views(avatar, model, flame, self.ds.timesteps, self.ds.cameras, self.bg, self.rc)
    m = np.broadcast_to(self.mask, img.shape)

    def psnr(x, y, sel):
      mse = float(np.mean((x[sel] - y[sel]) ** 2)) if sel.any() else float("nan")
      return 10 * math.log10(1.0 / max(mse, 1e-12))

    return {"region/psnr_in_vs_gt": psnr(img, self.gt, m), "region/psnr_out_vs_unedited": psnr(img, self.before, ~m)}


EDITOR_COLUMNS = [
  ("test/psnr", "test PSNR", 2),
  ("test/ssim", "test SSIM", 4),
  ("region/psnr_in_vs_gt", "face region PSNR vs GT", 2),
  ("region/psnr_out_vs_unedited", "outside PSNR vs unedited", 2),
  ("edit_seconds", "edit s", 1),
]


def editor_table(res: dict, variants: list[str]) -> str:
  agg = res["aggregate"]
  lines = [
    "| variant | seeds | " + " | ".join(h for _, h, _ in EDITOR_COLUMNS) + " |",
    "|" + "---|" * (len(EDITOR_COLUMNS) + 2),
  ]
  for v in variants:
    if v not in agg:
      continue
    cells = []
    for k, _, d in EDITOR_COLUMNS:
      st = agg[v].get(k, dict(mean=float("nan"), std=float("nan")))
      cells.append(f"{st['mean']:.{d}f} ± {st['std']:.{d}f}")
    lines.append(f"| {LABELS[v]} | {agg[v]['test/psnr']['n']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Results: aggregates, table, claim check, grid
# ------------------------------------------------------------------------------------------------


def gan_gradient_share(er, views: int = 8) -> dict:
  """Why the GAN changes little: at the end of a GAN run, the norm of the adversarial term's
  gradient w.r.t. the rendered image relative to the L1 term's (lambda_l1 |x - edit|), over a
  few training views: for the faithful joint loss w (L_D + L_G) (its L_D part pushes the render
  toward "fake", against L_G) and for w L_G alone (standard mode)."""
  import jax.numpy as jnp

  from gaedit_jax.avatar import render_views
  from gaedit_jax.edit import discriminator as D
  from gaedit_jax.edit.editors import EditContext

  c, st = er.cfg, er.state
  idx = np.linspace(0, len(er.train_ds) - 1, views).astype(int)
  b = er.train_ds.batch(idx)
  x = jnp.asarray(
    render_views(
      st.avatar,
      er.model,
      st.flame,
      np.asarray(b.timestep),
      b.camera,
      er.background,
      dataclasses.replace(er.settings.render, wabe_k=0, wabe_backward=False, mesh=None),
    )
  )
  edit = er.editor(jax.random.key(c.seed), x, jnp.asarray(b.image), EditContext.from_batch(b))
  g_l1 = jax.grad(lambda y: c.lambda_l1 * jnp.mean(jnp.abs(y - edit)))(x)
  g_f = jax.grad(
    lambda y: D.adversarial_loss(er.disc_module, st.disc, edit, y, mode="faithful", weight=c.gan_weight)[0]
  )(x)
  g_g = jax.grad(lambda y: D.generator_loss(er.disc_module, st.disc, edit, y, weight=c.gan_weight))(x)
  n = lambda g: float(jnp.linalg.norm(g))
  return dict(
    faithful_over_l1=n(g_f) / n(g_l1),
    generator_over_l1=n(g_g) / n(g_l1),
    cos_faithful_generator=float(jnp.vdot(g_f, g_g) / (n(g_f) * n(g_g) + 1e-30)),
  )


def _stats(vals) -> dict:
  v = np.asarray([x for x in vals if not math.isnan(x)], np.float64)
  if len(v) == 0:
    return dict(mean=float("nan"), std=float("nan"), n=0)
  return dict(mean=float(v.mean()), std=float(v.std(ddof=1)) if len(v) > 1 else float("nan"), n=len(v))


def aggregate(runs: dict, variants: list[str], seeds: list[int]) -> dict:
  """variant -> metric -> {mean, std (sample, over seeds), n}, over the requested variants and seeds
  (results.json may hold more runs from earlier invocations)."""
  out = {}
  for var in variants:
    by_seed = {s: r for s, r in runs.get(var, {}).items() if int(s) in seeds}
    if not by_seed:
      continue
    keys = sorted({k for r in by_seed.values() for k in r["metrics"]})
    out[var] = {k: _stats([r["metrics"][k] for r in by_seed.values()]) for k in keys}
    out[var]["edit_seconds"] = _stats([r["edit_seconds"] for r in by_seed.values()])
  return out


def table(res: dict, variants: list[str]) -> str:
  agg, before = res["aggregate"], res["before"]
  head = "| variant | seeds | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
  lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
  lines.append(f"| {LABELS['before']} | - | " + " | ".join(f"{before[k]:.{d}f}" for k, _, d in COLUMNS) + " |")
  for v in variants:
    if v not in agg:
      continue
    cells = []
    for k, _, d in COLUMNS:
      s = agg[v].get(k, dict(mean=float("nan"), std=float("nan")))
      cells.append(f"{s['mean']:.{d}f} ± {s['std']:.{d}f}")
    lines.append(f"| {LABELS[v]} | {agg[v]['test/psnr']['n']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def claim_check(agg: dict) -> list[dict]:
  """delta of the variant's mean over plain's (improvement: higher PSNR, lower flicker) and whether
  it exceeds the seed-to-seed spread max(std plain, std variant)."""
  rows = []
  if "plain" not in agg:
    return rows
  for v in agg:
    if v == "plain":
      continue
    for k, sign in (("test/psnr", 1.0), ("test_open/psnr", 1.0), ("test/flicker", -1.0)):
      p, q = agg["plain"].get(k), agg[v].get(k)
      if p is None or q is None:
        continue
      delta = sign * (q["mean"] - p["mean"])
      spread = max(p["std"], q["std"])
      ok = None if math.isnan(spread) or math.isnan(delta) else bool(delta > spread)
      rows.append(dict(variant=v, metric=k, improvement=delta, spread=spread, exceeds_spread=ok))
  return rows


def print_claim(rows: list[dict]) -> str:
  out = [
    "Claim check: \"WABE / GAN improve held-out timesteps by more than the seed-to-seed spread\"",
    "criterion: improvement = mean(variant) - mean(plain) over seeds (for flicker: plain - variant); "
    "yes if improvement > max(std plain, std variant) (sample std over seeds)",
  ]
  for r in rows:
    unit = " dB" if "psnr" in r["metric"] else ""
    d = 2 if unit else 5
    verdict = {True: "YES", False: "no", None: "n/a (needs >= 2 seeds)"}[r["exceeds_spread"]]
    tag = "  " if r["metric"] == "test/psnr" else "    (also) "
    out.append(
      f"{tag}{LABELS[r['variant']]} vs plain, {r['metric']}: improvement {r['improvement']:+.{d}f}{unit}, "
      f"spread {r['spread']:.{d}f}{unit} -> {verdict}"
    )
  text = "\n".join(out)
  print(text)
  return text


def save_grid(a, res: dict, variants: list[str], gt: np.ndarray) -> Path:
  """OUT/grid.png: ground truth | before edit | variants (first seed), labelled."""
  from PIL import Image, ImageDraw

  from gaedit_jax.io.media import read_png, save_png, side_by_side, to_uint8

  tiles = [("ground truth", gt), ("before edit", read_png(a.out / "before_grid_frame.png"))]
  s0 = str(a.seeds[0])
  for v in variants:
    p = a.out / "runs" / v / f"seed{s0}" / "grid_frame.png"
    if s0 in res["runs"].get(v, {}) and p.exists():
      tiles.append((LABELS[v], read_png(p)))
  labelled = []
  for name, img in tiles:
    im = Image.fromarray(to_uint8(img))
    canvas = Image.new("RGB", (im.width, im.height + 12), (255, 255, 255))
    canvas.paste(im, (0, 12))
    ImageDraw.Draw(canvas).text((2, 0), name, fill=(0, 0, 0))
    labelled.append(np.asarray(canvas))
  return save_png(a.out / "grid.png", side_by_side(labelled))


def run_jobs(a, res: dict) -> None:
  """--jobs N: the variants not yet in `res` are split over N child processes of this script, each
  in OUT/jobs/<k> with the data and the avatar of OUT linked in; their runs are merged into `res`."""
  import subprocess

  todo = [v for v in a.variants if any(str(s) not in res["runs"].get(v, {}) for s in a.seeds)]
  groups = [todo[k :: a.jobs] for k in range(min(a.jobs, len(todo)))]
  procs = []
  for k, vs in enumerate(groups):
    d = a.out / "jobs" / str(k)
    d.mkdir(parents=True, exist_ok=True)
    for name in ("data", "data_facepaint", "model"):
      if not (d / name).exists():
        (d / name).symlink_to(a.out / name)
    argv = [
      sys.executable,
      os.path.abspath(__file__),
      "--out",
      str(d),
      "--reuse",
      "--variants",
      *vs,
      "--seeds",
      *map(str, a.seeds),
      "--edit-iterations",
      str(a.edit_iterations),
      "--recon-iterations",
      str(a.recon_iterations),
      "--data-seed",
      str(a.data_seed),
      "--open-jaw",
      str(a.open_jaw),
      "--gan-weight",
      str(a.gan_weight),
      "--noise",
      str(a.noise),
    ]
    argv += [x for k2 in DEMO_SIZES for x in ("--" + k2.replace("_", "-"), str(getattr(a, k2)))]
    if a.editors:
      argv += ["--editors", "--command-every", str(a.command_every), "--command-batch", str(a.command_batch)]
    if a.lpips_weights:
      argv += ["--lpips-weights", str(a.lpips_weights)]
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    print(f"job {k}: variants {vs}", flush=True)
    procs.append((d, subprocess.Popen(argv, env=env, stdout=open(d / "log.txt", "w"), stderr=subprocess.STDOUT)))
  for d, proc in procs:
    if proc.wait() != 0:
      raise SystemExit(f"bench job in {d} failed (exit {proc.returncode}); see {d / 'log.txt'}")
    sub = json.loads((d / "results.json").read_text())
    for v, runs in sub["runs"].items():
      res["runs"].setdefault(v, {}).update(runs)
      for seed in runs:
        src, dst = d / "runs" / v / f"seed{seed}", a.out / "runs" / v / f"seed{seed}"
        if src.exists():
          shutil.rmtree(dst, ignore_errors=True)
          dst.parent.mkdir(parents=True, exist_ok=True)
          shutil.copytree(src, dst)


def write_results(a, res: dict, variants: list[str]) -> None:
  res["aggregate"] = aggregate(res["runs"], variants, a.seeds)
  res["claim_check"] = claim_check(res["aggregate"])
  tmp = a.out / "results.json.tmp"
  tmp.write_text(json.dumps(res, indent=2))
  tmp.replace(a.out / "results.json")  # atomic: a crash never leaves a half-written file


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def scaled_rates(factor: float) -> dict:
  """Every learning rate of `gaedit edit` (avatar groups, FLAME, discriminator) times `factor`, as
  flags; {} for 1."""
  if factor == 1.0:
    return {}
  from gaedit_jax.edit.loop import EditConfig
  from gaedit_jax.train.config import LearningRates

  base = EditConfig(avatar=Path("."), out=Path("."))
  rates = {
    f.name: getattr(base.lr, f.name) * factor for f in dataclasses.fields(LearningRates) if f.name.endswith("_lr")
  }
  return dict(rates, position_lr=base.position_lr * factor, disc_lr=base.disc_lr * factor)


def main(argv=None) -> dict:
  from gaedit_jax.avatar import load_trained
  from gaedit_jax.edit.loop import EditConfig, EditRun, build_editor
  from gaedit_jax.io.media import save_png

  a = parse_args(argv)
  a.out.mkdir(parents=True, exist_ok=True)
  t_start = time.perf_counter()
  print(
    f"bench_edit_synthetic: {jax.device_count()} x {jax.devices()[0].platform}, {a.width}x{a.height}, {a.num_cameras} cameras, "
    f"{a.num_timesteps} timesteps, recon {a.recon_iterations} it, edit {a.edit_iterations} it, "
    f"variants {a.variants}, seeds {a.seeds}"
  )
  t0 = time.perf_counter()
  fresh = prepare_data(a)
  t_data = time.perf_counter() - t0
  recon = reconstruct_avatar(a, fresh)
  settings = dict(
    width=a.width,
    height=a.height,
    num_cameras=a.num_cameras,
    num_timesteps=a.num_timesteps,
    data_seed=a.data_seed,
    recon_iterations=a.recon_iterations,
    edit_iterations=a.edit_iterations,
    open_jaw=a.open_jaw,
    noise=a.noise,
    lpips=a.lpips_weights is not None,
    gan_weight=a.gan_weight,
  )
  res = dict(settings=settings, runs={})
  old = a.out / "results.json"
  if a.reuse and not fresh and recon["reused"] and old.exists():
    prev = json.loads(old.read_text())
    if prev.get("settings") == settings:
      res["runs"] = prev.get("runs", {})
      res["recon"] = prev.get("recon", {})
    else:
      print("note: results.json was made with other settings: its runs are not reused")

  # unedited avatar: the "before edit" row and the reconstruction's own quality (vs skin)
  avatar, model, flame, _, acfg, _ = load_trained(a.out / "model")
  c = acfg["config"]
  ev = Evaluator(a, float(c.get("image_scale", 1.0)), bool(c.get("white_background", True)))
  res["eval"] = ev.info()
  before, frame = ev(avatar, model, flame)
  save_png(a.out / "before_grid_frame.png", frame)
  recon_q, _ = ev(avatar, model, flame, against="skin")
  res["before"] = before
  if not recon["reused"]:
    res["recon"] = dict(recon, data_seconds=t_data)
  res.setdefault("recon", {})["metrics_vs_skin"] = recon_q
  print(
    f"reconstruction vs skin ground truth: val PSNR {recon_q['val/psnr']:.2f}, test PSNR {recon_q['test/psnr']:.2f}; "
    f"before edit vs face paint: val PSNR {before['val/psnr']:.2f}, test PSNR {before['test/psnr']:.2f}"
  )
  print(
    f"held-out timesteps {res['eval']['test_timesteps']}, jaw {res['eval']['test_jaw']} rad; "
    f"open-mouth (> {a.open_jaw} rad): {res['eval']['frames']['test_open']} of {res['eval']['frames']['test']} test frames"
  )

  if a.jobs > 1:
    run_jobs(a, res)
    write_results(a, res, a.variants)
  editor = None  # the synthetic editor (all face-paint images) is loaded once and shared by all runs
  compiled: set[str] = set()  # variants whose jitted edit step this process has compiled
  scale, white = float(c.get("image_scale", 1.0)), bool(c.get("white_background", True))
  region_ev = RegionEval(ev, avatar, model, flame) if a.editors else None
  for v in a.variants:
    for seed in a.seeds:
      if str(seed) in res["runs"].get(v, {}):
        print(f"[{LABELS[v]}, seed {seed}] reused from results.json")
        continue
      run_dir = a.out / "runs" / v / f"seed{seed}"
      kw = dict(VARIANTS[v])
      kw.update(scaled_rates(kw.pop("lr_scale", 1.0)))
      if kw.get("editor") in ("frames", "command") and editor is None:
        editor = build_editor(
          EditConfig(
            avatar=a.out / "model",
            out=run_dir,
            editor="synthetic",
            target_data=a.out / "data_facepaint",
            synthetic_noise=a.noise,
          ),
          scale,
          white,
        )
      if kw.get("editor") == "frames":
        k = int(v.split("_k")[1].split("_")[0])
        kw.update(edited=prepare_frames(a, k, editor, scale, white), target_data=None)
      elif kw.get("editor") == "command":
        kw.update(
          edit_command=command_template(a, seed),
          edit_every=a.command_every,
          edit_command_batch=a.command_batch,
          target_data=None,
        )
      iterations = a.edit_iterations // kw.get("batch_size", 1)  # the same number of edited views
      cfg = build(
        EditConfig,
        avatar=a.out / "model",
        out=run_dir,
        synthetic_noise=a.noise,
        iterations=iterations,
        seed=seed,
        lambda_lpips=10.0 if a.lpips_weights else 0.0,
        lpips_weights=a.lpips_weights,
        checkpoint_interval=iterations,
        keep_checkpoints=1,
        dump_interval=0,
        progress=a.progress,
        tensorboard=False,
        gan_weight=a.gan_weight,
        overwrite=True,
        eval_every=0,
        **{"editor": "synthetic", "target_data": a.out / "data_facepaint", **kw},
      )
      if editor is None:
        editor = build_editor(cfg, scale, white)
      er = EditRun(cfg, editor=editor if cfg.editor == "synthetic" else None)
      out = er.run()  # edit_seconds includes the compilation of the variant's step (first seed)
      t1 = time.perf_counter()
      m, frame = ev(er.state.avatar, er.model, er.state.flame)
      if region_ev is not None:
        m.update(region_ev(er.state.avatar, er.model, er.state.flame))
      if cfg.gan:
        share = gan_gradient_share(er)
        m.update({f"gan_grad/{k}": v for k, v in share.items()})
        print(
          f"  GAN gradient at the render, relative to the L1 term's: faithful w(L_D+L_G) "
          f"{share['faithful_over_l1']:.2e}, w L_G {share['generator_over_l1']:.2e} "
          f"(cosine between them {share['cos_faithful_generator']:+.3f})"
        )
      save_png(run_dir / "grid_frame.png", frame)
      shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the export (point_cloud/) is enough
      t_eval = time.perf_counter() - t1
      res["runs"].setdefault(v, {})[str(seed)] = dict(
        metrics=m,
        edit_seconds=out["edit_seconds"],
        eval_seconds=t_eval,
        iterations=out["iterations"],
        views_per_step=cfg.batch_size,
        devices=1 if er.mesh is None else er.mesh.size,
      )
      write_results(a, res, a.variants)
      note = "" if v in compiled else " (incl. compile)"
      compiled.add(v)
      print(
        f"[{LABELS[v]}, seed {seed}] edit {out['edit_seconds']:.1f} s{note}, eval {t_eval:.1f} s: "
        f"val PSNR {m['val/psnr']:.2f} SSIM {m['val/ssim']:.4f} | test PSNR {m['test/psnr']:.2f} "
        f"SSIM {m['test/ssim']:.4f} | open-mouth PSNR {m['test_open/psnr']:.2f} | "
        f"flicker {m['test/flicker']:.5f}",
        flush=True,
      )

  write_results(a, res, a.variants)
  gt = ev.splits["test"]["paint"][ev.grid_index]
  grid = save_grid(a, res, a.variants, gt)
  md = table(res, a.variants)
  print(
    f"\nEdit toward face paint (synthetic editor, {a.edit_iterations} iterations, GAN weight {a.gan_weight}), "
    "metrics vs the face-paint ground truth; mean ± sample std over seeds\n"
  )
  print(md + "\n")
  claim = print_claim(res["claim_check"])
  (a.out / "table.md").write_text(md + "\n\n" + claim + "\n")
  if a.editors:
    res["aggregate"] = aggregate(res["runs"], a.variants, a.seeds)
    for v, runs in res["runs"].items():  # edit time as a column
      if v in res["aggregate"]:
        res["aggregate"][v]["edit_seconds"] = _stats([r["edit_seconds"] for r in runs.values()])
    emd = editor_table(res, a.variants)
    print("\nEditors and regions (test split; region PSNRs: face region of the unedited avatar)\n\n" + emd + "\n")
    (a.out / "editors.md").write_text(emd + "\n")
  print(
    f"\nresults: {a.out / 'results.json'}, table: {a.out / 'table.md'}, grid: {grid}; "
    f"total {time.perf_counter() - t_start:.0f} s"
  )
  return res


if __name__ == "__main__":
  main()
