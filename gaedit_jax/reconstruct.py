"""`gaedit reconstruct`: GaussianAvatars training (METHOD §2.3-2.8) as one jitted train step.

Per step (one `jax.jit`, no host sync): a batch of B views -> FLAME forward for their timesteps
(identity baked into the template, METHOD §2.6: shape / static_offset are not optimised) -> triangle
frames -> world Gaussians -> rasterize -> 0.8 L1 + 0.2 D-SSIM + position / scale regularisers
(METHOD §2.5) -> optax Adam (eps 1e-15) with per-group learning rates and the log-linear position
schedule (METHOD §2.6), FLAME pose / translation / expression fine-tuned per timestep -> densification
statistics from the screen-space gradient (METHOD §2.7). Densification, opacity resets, checkpoints and
logging run between steps. The SH degree (static in the render config) rises every
`sh_degree_interval` steps: one compile per degree.

Iterations are 1-based as in GA: iteration `it` is the step that makes `state.step == it`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gaedit_jax import parallel
from gaedit_jax.avatar import (
  baked_model,
  check_consistency,
  fit_flame_dims,
  load_model,
  pose,
  pose_frames,
  resolve_flame_path,
)
from gaedit_jax.data.dataset import AvatarDataset
from gaedit_jax.data.validate import validate_dataset
from gaedit_jax.density import DensifyConfig, DensityStats, densify_and_prune, map_slot_leaves, reset_opacity
from gaedit_jax.errors import DatasetError, InputError
from gaedit_jax.eval_recon import evaluate_split
from gaedit_jax.flags import check_choice, check_flags, check_path, config_checks
from gaedit_jax.flame import FlameModel, FlameMotion, FlameParams
from gaedit_jax.io.ply import save_avatar_ply, save_flame_npz, save_world_ply
from gaedit_jax.losses import photometric, position_reg, psnr, scale_reg
from gaedit_jax.nets.lpips import load_lpips
from gaedit_jax.render import rasterize
from gaedit_jax.render.types import RenderConfig
from gaedit_jax.rig import Avatar, init_avatar
from gaedit_jax.train import optimizer as opt_lib
from gaedit_jax.train.config import (
  GA_POSITION,
  GA_RATES,
  GA_REGULARISERS,
  RASTER,
  LearningRates,
  PositionSchedule,
  RasterSettings,
  Regularisers,
  RunSettings,
)
from gaedit_jax.train.frames import FRAMES_ON_DEVICE, DeviceFrames, keep_on_device
from gaedit_jax.train.loop import (
  CompileCounter,
  IsectCapacity,
  Prefetcher,
  cached_step,
  flush_metrics,
  frame_order,
  jsonable,
)
from gaedit_jax.train.run import Session, file_id
from gaedit_jax.train.run_dir import write_json


@dataclasses.dataclass
class ReconstructConfig:
  """Train a GaussianAvatars avatar (defaults: the paper's 600k-iteration schedule)."""

  data: Path
  """Dataset folder (GaussianAvatars / VHAP layout: transforms_{train,val,test}.json, ...)."""
  out: Path
  """Output model folder (checkpoints, point_cloud/, tensorboard, validation images)."""
  flame_model: Path | None = None
  """FLAME model file (pkl or npz). Default: DATA/flame/synthetic_flame.pkl (the synthetic data)."""
  iterations: int = 600_000
  """Training iterations (GA: 600k)."""
  batch_size: int = 1
  """Views per step (GA: 1); B > 1 renders B views in one native batch."""
  devices: int | None = None
  """Devices to split each step's views over (data parallel, jax.sharding; default: all that
  divide the batch size). The per-Gaussian state is split over them, the rest replicated; see
  gaedit_jax.parallel."""
  seed: int = 0
  """Seed of the data order, the initial colours and the split noise."""
  image_scale: float = 1.0
  """Resample images (e.g. 0.5 for a faster CPU run)."""
  image_cache_gb: float = 4.0
  """Memory for decoded training images (LRU cache); small datasets stay fully in memory."""
  data_workers: int = 4
  """Threads that decode the training images of the coming iterations ahead of their batches
  (a frame not in the image cache is read from its PNG / JPEG file: about 10-25 ms at 550x802, several
  times a step). 0: each image is decoded when its batch is made. Never changes results."""
  frames_on_device: Literal["auto", "on", "off"] = "auto"
  """Keep the decoded training images (uint8) on the device and gather each batch there, so a step
  moves only its frame indices (gaedit_jax.train.frames). auto: when one process trains on a GPU
  on images of one size that take at most --image-cache-gb and a quarter of its memory (not on the
  CPU, where it gains nothing). Never changes results."""
  steps_per_call: int = 0
  """Iterations per jitted call: k consecutive steps run as one scan on the device, so the loop's
  host work (dispatch, data hand-off) and the gap between steps are paid once per k iterations.
  A call never spans an iteration after which the loop has host work (metrics flush, densification,
  SH-degree rise, checkpoint, export, evaluation); there it runs single steps. 0: auto (on a GPU
  10 // batch size, at least 1; 1 on the CPU, where a step takes tens of ms). --prefetch then counts
  calls. Same data and updates, same results (tested)."""
  white_background: bool = True
  """Composite over white (GA --white_background); also triggers the opacity reset at densify_from."""
  intrinsics: Literal["file", "fov_x"] = "file"
  """Camera intrinsics: "file" reads fl_x, fl_y, cx, cy; "fov_x" is GaussianAvatars' camera (fx = fy
  from camera_angle_x, principal point at the image centre; gaedit_jax.data.layout.INTRINSICS)."""
  # --- learning rates (METHOD §2.6) ---
  position_lr_init: float = GA_POSITION.init
  """Local xyz learning rate at the start (times the camera extent)."""
  position_lr_final: float = GA_POSITION.final
  """Local xyz learning rate at the end of the schedule (times the camera extent)."""
  position_lr_max_steps: int | None = None
  """Length of the log-linear position schedule (default: iterations)."""
  lr: LearningRates = GA_RATES
  """Per-group learning rates (METHOD §2.6)."""
  # --- losses (METHOD §2.5) ---
  lambda_dssim: float = 0.2
  """Weight of D-SSIM in the photometric loss (L1 gets 1 - lambda)."""
  reg: Regularisers = GA_REGULARISERS
  """Position / scale regularisers of the visible Gaussians (METHOD §2.5)."""
  # --- SH ---
  sh_degree: int = 3
  """Maximum SH degree."""
  sh_degree_interval: int = 1000
  """Raise the active SH degree every this many iterations."""
  # --- densification (METHOD §2.7) ---
  densify_from: int = 10_000
  """Densify when densify_from < it < densify_until."""
  densify_until: int | None = None
  """Default: iterations."""
  densify_interval: int = 2_000
  """Densify every this many iterations."""
  densify_grad_threshold: float = 2e-4
  """Mean screen-space gradient (NDC units) above which Gaussians clone / split."""
  percent_dense: float = 0.01
  """Clone if max world scale <= percent_dense x extent, else split."""
  min_opacity: float = 0.005
  """Prune Gaussians below this opacity."""
  opacity_reset_interval: int = 60_000
  """Opacity reset every this many iterations (and at densify_from with a white background)."""
  reset_opacity_at_densify_from: bool = True
  """With a white background GA also resets opacity at densify_from."""
  max_screen_size: float = 20.0
  """Screen-size pruning threshold (px), used only with --prune-screen-size."""
  prune_screen_size: bool = False
  """Also prune Gaussians whose screen radius exceeded --max-screen-size since the last
  densification, once it > opacity_reset_interval. Off: as GaussianAvatars, whose test never fires
  (it zeroes the radius statistic just before); the world-size test (> 0.1 extent) runs either way."""
  split_add_parent_xyz: bool = True
  """Split children at parent xyz + offset (GA HEAD); False: offset only (the editor's GA copy)."""
  capacity: int | None = None
  """Initial slot capacity (default 2x the face count; doubles when full)."""
  raster: RasterSettings = RASTER
  """Rasterizer settings."""
  # --- bookkeeping ---
  run: RunSettings = RunSettings()
  """Checkpoints, --resume / --overwrite, logging."""
  eval_interval: int = 60_000
  """Validation images + metrics every this many iterations (0: only at the end)."""
  save_interval: int = 0
  """Also export point_cloud/iteration_<it> every this many iterations (0: only at the end)."""
  lpips_weights: Path | None = None
  """LPIPS-VGG weights (folder, see gaedit_jax.nets.lpips.load_lpips): evaluation adds LPIPS."""
  lpips_input: Literal["unit", "signed"] = "unit"
  """Images go into the LPIPS metric in [0, 1] as GaussianAvatars does ("unit"), or rescaled to
  [-1, 1], the range LPIPS was trained for ("signed")."""
  eval_max_frames: int | None = None
  """Evaluate at most this many frames per split (evenly spaced; None = all)."""
  world_ply_timestep: int | None = 0
  """Also export a world-space 3DGS ply (generic viewers) posed at this timestep (None: skip)."""

  def __post_init__(self):
    config_checks(self.validate_flags)

  def validate_flags(self) -> None:
    """Value checks of the flags (one-line InputError naming the flag)."""
    check_flags(
      self,
      {
        "iterations batch_size sh_degree_interval densify_interval opacity_reset_interval "
        "devices position_lr_max_steps eval_max_frames capacity": "int >= 1",
        "seed densify_from densify_until eval_interval save_interval world_ply_timestep steps_per_call "
        "data_workers": "int >= 0",
        "sh_degree": "int [0, 3]",
        "image_scale position_lr_init position_lr_final max_screen_size": "> 0",
        "image_cache_gb densify_grad_threshold percent_dense": ">= 0",
        "lambda_dssim": "[0, 1]",
        "min_opacity": "[0, 1)",
      },
    )
    check_choice(self, "intrinsics", ("file", "fov_x"))
    check_choice(self, "frames_on_device", FRAMES_ON_DEVICE)

  def position_schedule(self) -> PositionSchedule:
    """The xyz rate's schedule runs over --position-lr-max-steps (default: the whole run)."""
    return PositionSchedule(
      self.position_lr_init, self.position_lr_final, self.position_lr_max_steps or self.iterations
    )

  def check_inputs(self, *, progress: bool | None = None):
    """Up-front checks of the run's input files (before any step): the dataset (every split, image,
    mask and FLAME file, `validate_dataset`), the FLAME model and LPIPS paths, and the flags that
    depend on the data (--batch-size, --world-ply-timestep). Returns the DatasetSummary."""
    summary = validate_dataset(
      self.data,
      ("train", "val", "test"),
      intrinsics=self.intrinsics,
      progress=self.run.progress if progress is None else progress,
    )
    check_path(resolve_flame_path(self.data, self.flame_model), "--flame-model", kind="file")
    if self.lpips_weights is not None:
      check_path(self.lpips_weights, "--lpips-weights")
    n = summary.frames["train"]
    if self.batch_size > n:
      raise DatasetError(f"--batch-size {self.batch_size} is larger than the {n} training frames of {self.data}")
    t = self.world_ply_timestep
    if t is not None and t >= summary.num_timesteps:
      raise DatasetError(
        f"--world-ply-timestep {t} is out of range: {self.data} has timesteps 0..{summary.num_timesteps - 1}"
      )
    return summary


# ------------------------------------------------------------------------------------------------
# State
# ------------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
  """Everything a step reads and writes: avatar, per-timestep FLAME params [T,...] (shape and
  static_offset are baked into the model), optimizer state, density statistics, step, PRNG key."""

  avatar: Avatar
  flame: FlameMotion
  opt_state: Any
  stats: DensityStats
  step: jax.Array
  key: jax.Array

  def params(self) -> dict:
    return {"gauss": self.avatar.params(), "flame": self.flame}


def make_optimizer(cfg: ReconstructConfig, extent: float) -> optax.GradientTransformation:
  """One Adam (eps 1e-15) per parameter group, each with its own learning rate (METHOD §2.6;
  train.optimizer)."""
  return opt_lib.make_optimizer(cfg.lr, cfg.position_schedule(), extent)


def init_state(
  key: jax.Array, model: FlameModel, flame: FlameParams, optimizer, *, capacity: int | None = None, sh_degree: int = 3
) -> TrainState:
  """METHOD §2.3: one Gaussian per face; FLAME per-timestep params from the tracking."""
  k_init, k_run = jax.random.split(key)
  f = model.num_faces
  avatar = init_avatar(k_init, f, capacity=capacity or 2 * f, sh_degree=sh_degree)
  fl = jax.tree.map(lambda v: jnp.array(v, jnp.float32, copy=True), flame.motion)  # the step donates it
  params = {"gauss": avatar.params(), "flame": fl}
  return TrainState(
    avatar=avatar,
    flame=fl,
    opt_state=optimizer.init(params),
    stats=DensityStats.zeros(avatar.capacity),
    step=jnp.zeros((), jnp.int32),
    key=jax.random.key_data(k_run),
  )


# ------------------------------------------------------------------------------------------------
# The train step
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the jitted step (hashable)."""

  render: RenderConfig
  lambda_dssim: float = 0.2
  reg: Regularisers = GA_REGULARISERS
  split_state: bool = True
  """With a device mesh (render.mesh): the per-Gaussian state arrives split over the devices
  (parallel.split_gaussians) and leaves split; False: replicated in and out (for comparison)."""


def train_step(
  state: TrainState,
  image: jax.Array,
  camera,
  timestep: jax.Array,
  model: FlameModel,
  background: jax.Array,
  *,
  optimizer: optax.GradientTransformation,
  cfg: StepConfig,
) -> tuple[TrainState, dict]:
  """One optimisation step on B views (image [B,H,W,3], camera [B], timestep [B]). Pure."""
  b = image.shape[0]
  cap = state.avatar.capacity
  w, h = camera.width, camera.height
  # Several devices, split state (gaedit_jax.parallel): each per-Gaussian array is gathered once
  # here, the views are rendered on their devices, the gradients summed over the devices and
  # returned to the split layout (on the H200 XLA all-reduces them, then keeps each device's half),
  # and Adam and the statistics update each device's own Gaussians.
  mesh = cfg.render.mesh if cfg.split_state else None
  whole_avatar = parallel.constrain_whole(state.avatar, mesh)

  def loss_fn(params, offset):
    av = whole_avatar.with_params(parallel.constrain_whole(params["gauss"], mesh))
    g = dataclasses.replace(pose(av, model, params["flame"], timestep), screen_offset=offset)  # [B,C]
    out = rasterize(g, camera, background, cfg.render)
    l_rgb, parts = photometric(out.image, image, cfg.lambda_dssim)
    visible = jnp.any(out.radii > 0, axis=0) & av.active
    r = cfg.reg
    l_pos = position_reg(av.xyz, visible, r.threshold_xyz)
    l_scale = scale_reg(av.log_scale, visible, r.threshold_scale)
    loss = l_rgb + r.lambda_xyz * l_pos + r.lambda_scale * l_scale
    return loss, (out, parts, l_pos, l_scale)

  params = state.params()
  offset = jnp.zeros((b, cap, 2), jnp.float32)
  (loss, (out, parts, l_pos, l_scale)), (grads, g_off) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
    params, offset
  )
  grads = parallel.constrain_split(grads, mesh, cap)
  updates, opt_state = optimizer.update(grads, state.opt_state, params)
  params = optax.apply_updates(params, updates)

  # Densification statistics (METHOD §2.7): per view ||dL/dmu_2D|| in NDC units (pixel gradient
  # times (W/2, H/2)); the loss is a mean over the B views, so x B gives per-view gradients.
  gn = jnp.linalg.norm(g_off * (b * jnp.array([w / 2.0, h / 2.0], jnp.float32)), axis=-1)  # [B,C]
  vis = (out.radii > 0) & state.avatar.active
  st = state.stats
  stats = DensityStats(
    accum=st.accum + jnp.sum(jnp.where(vis, gn, 0.0), 0),
    denom=st.denom + jnp.sum(vis, 0).astype(jnp.float32),
    max_radii=jnp.maximum(st.max_radii, jnp.max(jnp.where(vis, out.radii, 0), 0).astype(jnp.float32)),
  )
  new = TrainState(
    avatar=state.avatar.with_params(params["gauss"]),
    flame=params["flame"],
    opt_state=opt_state,
    stats=stats,
    step=state.step + 1,
    key=state.key,
  )
  # An overflowing intersection buffer means an incomplete image: skip the update (no host sync;
  # the loop reads the flag later and enlarges the buffer).
  ovf = jnp.any(out.overflow)
  keep = dataclasses.replace(state, step=state.step + 1)
  new = jax.tree.map(lambda a, b: jnp.where(ovf, a, b), keep, new)
  metrics = dict(
    loss=loss,
    l1=parts["l1"],
    dssim=parts["dssim"],
    reg_xyz=l_pos,
    reg_scale=l_scale,
    psnr=jnp.mean(psnr(jnp.clip(out.image, 0, 1), image)),
    num_gaussians=state.avatar.num_active,
    overflow=jnp.any(out.overflow),
    isect_need=jnp.max(out.intersections).astype(jnp.float32) / cap,
  )
  return parallel.constrain_split(new, mesh, cap), metrics


def make_step(optimizer, cfg: StepConfig):
  """The jitted step for one static config (one per SH degree / capacity)."""

  def reconstruct_step(s, img, cam, t, m, bg):  # named: compilation logs and counts show it
    return train_step(s, img, cam, t, m, bg, optimizer=optimizer, cfg=cfg)

  return jax.jit(reconstruct_step, donate_argnums=(0,))


def make_steps(optimizer, cfg: StepConfig):
  """Several consecutive steps in one jitted call: `batches` is a tuple of k (image, camera,
  timestep) batches, run in order by a scan of `train_step` (one compiled body, whatever k).
  Returns the state after the k steps and their metrics stacked [k]."""

  def reconstruct_steps(s, batches, m, bg):
    xs = jax.tree.map(lambda *a: jnp.stack(a), *batches)
    return jax.lax.scan(lambda st, x: train_step(st, *x, m, bg, optimizer=optimizer, cfg=cfg), s, xs)

  return jax.jit(reconstruct_steps, donate_argnums=(0,))


# ------------------------------------------------------------------------------------------------
# The training loop
# ------------------------------------------------------------------------------------------------


class Trainer:
  """Holds the data, the model, the jitted steps and the state; `run()` trains to cfg.iterations."""

  def __init__(self, cfg: ReconstructConfig):
    self.cfg = cfg
    cfg.check_inputs(progress=cfg.run.progress and parallel.is_primary())  # bad input fails here, not at step N
    self.out = Path(cfg.out).absolute()  # created, locked and checked by run()
    kw = dict(white_background=cfg.white_background, image_scale=cfg.image_scale, intrinsics=cfg.intrinsics)
    self.train_ds = AvatarDataset(cfg.data, "train", cache_size=0, **kw)
    h, w = self.train_ds.image_size
    self.train_ds.cache_size = max(64, int(cfg.image_cache_gb * 1e9 / (h * w * 3)))  # decoded uint8 images
    self.eval_ds = {}
    for s in ("val", "test"):
      try:
        self.eval_ds[s] = AvatarDataset(cfg.data, s, cache_size=0, **kw)
      except FileNotFoundError:
        pass
    self.model_full = load_model(cfg.data, cfg.flame_model)
    flame = fit_flame_dims(self.model_full, self.train_ds.flame_params)
    check_consistency(self.train_ds, self.model_full, flame)
    self.flame0 = flame
    self.model = baked_model(self.model_full, flame)
    self.extent = self.train_ds.camera_extent()
    self.background = jnp.asarray(self.train_ds.background)
    self.optimizer = make_optimizer(cfg, self.extent)
    self.capacity_ctl = IsectCapacity(cfg.raster.isect_per_gaussian, cfg.raster.adapt_isect)
    self.mesh = parallel.view_mesh(cfg.devices, cfg.batch_size, what="gaedit reconstruct")
    # One host: the per-Gaussian state is split over its devices. Several hosts keep it replicated:
    # densification and exports read whole arrays on the host, which a process cannot do for an
    # array split across other processes' devices.
    self.split_state = self.mesh is not None and jax.process_count() == 1
    self.model_local = self.model
    self.model = parallel.replicate(self.model, self.mesh)
    self.background = parallel.replicate(self.background, self.mesh)
    self.frames = None  # the training images on the device (train.frames), or read per batch
    if keep_on_device(self.train_ds, cfg.frames_on_device, cfg.image_cache_gb * 1e9):
      self.frames = DeviceFrames(self.train_ds, self.mesh)
      self.train_ds.cache_size = 64  # each image is read once, into the device's copy
    # auto: 10 views per call on a GPU (B = 1: 10 steps; a step of B >= 10 views is long enough alone)
    auto = 1 if jax.local_devices()[0].platform == "cpu" else max(1, 10 // cfg.batch_size)
    self.steps_per_call = cfg.steps_per_call or auto
    self.state = self.placed(
      init_state(
        jax.random.key(cfg.seed), self.model, flame, self.optimizer, capacity=cfg.capacity, sh_degree=cfg.sh_degree
      )
    )
    self.history: list[dict] = []
    self.densify_log: list[dict] = []

  def placed(self, state: TrainState) -> TrainState:
    """The state on the run's devices: per-Gaussian arrays split over them, the rest on every one
    (parallel.split_gaussians; several hosts: all replicated); as it is with one device."""
    if not self.split_state:
      return parallel.replicate(state, self.mesh)
    return parallel.split_gaussians(state, self.mesh, int(state.avatar.capacity))

  @property
  def isect(self) -> float:
    """The rasterizer's intersection capacity per Gaussian slot now (train.loop.IsectCapacity)."""
    return self.capacity_ctl.value

  # -- schedule --------------------------------------------------------------------------------
  def sh_degree_at(self, it: int) -> int:
    return min(self.cfg.sh_degree, (it // max(self.cfg.sh_degree_interval, 1)))

  def render_config(self, sh_degree: int) -> RenderConfig:
    return RenderConfig(
      sh_degree=sh_degree,
      isect_per_gaussian=self.isect,
      mesh=self.mesh,
      tile_size=self.cfg.raster.tile_size,
      alpha_clamp_grad=self.cfg.raster.alpha_clamp_grad,
    )

  def step_fn(self, sh_degree: int, several: bool = False):
    """The jitted step for an SH degree (several: the call of consecutive steps, make_steps)."""
    c = self.cfg
    sc = StepConfig(
      render=self.render_config(sh_degree), lambda_dssim=c.lambda_dssim, reg=c.reg, split_state=self.split_state
    )
    make = make_steps if several else make_step
    return cached_step(
      ("reconstruct", several, c.lr, c.position_schedule(), self.extent, sc), lambda: make(self.optimizer, sc)
    )

  def steps_in_call(self, it: int, end: int, every: int) -> int:
    """How many iterations from `it` the next jitted call runs: --steps-per-call when the loop has
    no host work after any of them but the last and the SH degree stays (`every`: the checkpoint
    interval), else 1."""
    c = self.cfg
    k = self.steps_per_call
    if k <= 1 or it + k - 1 > end:
      return 1
    deg = self.sh_degree_at(it)
    for j in range(it, it + k - 1):
      if (
        any(self.densify_now(j))
        or j % c.run.log_interval == 0
        or any(n and j % n == 0 for n in (c.save_interval, c.eval_interval, every))
        or self.sh_degree_at(j + 1) != deg
      ):
        return 1
    return k

  # -- densification -----------------------------------------------------------------------------
  def _densify(self, it: int, densify: bool, reset: bool) -> None:
    c = self.cfg
    st = self.state
    if densify:
      t = int(self.train_ds.timesteps[frame_order(len(self.train_ds), c.batch_size, c.seed, it)[0]])
      k = np.asarray(pose_frames(self.model, st.flame, jnp.asarray(t)).scale)
      key = jax.random.fold_in(jax.random.wrap_key_data(st.key), it)
      dcfg = DensifyConfig(
        grad_threshold=c.densify_grad_threshold,
        percent_dense=c.percent_dense,
        min_opacity=c.min_opacity,
        max_screen_size=c.max_screen_size,
        prune_screen_size=c.prune_screen_size,
        split_add_parent_xyz=c.split_add_parent_xyz,
      )
      res = densify_and_prune(st.avatar, st.stats, k, self.extent, key, dcfg, prune_large=it > c.opacity_reset_interval)
      opt = map_slot_leaves(st.opt_state, res.reindex)
      st = dataclasses.replace(st, avatar=res.avatar, opt_state=opt, stats=DensityStats.zeros(res.avatar.capacity))
      self.densify_log.append(dict(iteration=it, **res.counts))
    if reset:
      opt = map_slot_leaves(st.opt_state, np.zeros_like, only=("opacity_logit",))
      st = dataclasses.replace(st, avatar=reset_opacity(st.avatar), opt_state=opt)
    self.state = self.placed(st)

  def densify_now(self, it: int) -> tuple[bool, bool]:
    c = self.cfg
    until = c.densify_until if c.densify_until is not None else c.iterations
    if it >= until:
      return False, False
    dens = it > c.densify_from and it % c.densify_interval == 0
    reset = it % c.opacity_reset_interval == 0 or (
      c.white_background and c.reset_opacity_at_densify_from and it == c.densify_from
    )
    return dens, reset

  # -- checkpoints -------------------------------------------------------------------------------
  def meta(self) -> dict:
    return dict(
      capacity=int(self.state.avatar.capacity),
      isect_per_gaussian=self.isect,
      extent=self.extent,
      config=jsonable(dataclasses.asdict(self.cfg)),
      densify=self.densify_log,
    )

  def resume_identity(self) -> dict:
    """What a checkpoint must share with this run to be resumed (flag -> value): the dataset and
    FLAME model (by content), and the settings that fix the state's shapes or meaning."""
    c = self.cfg
    return {
      "--data": file_id(c.data, "transforms_train.json"),
      "--flame-model": file_id(resolve_flame_path(c.data, c.flame_model)),
      "--sh-degree": c.sh_degree,
      "--capacity": c.capacity,
      "--seed": c.seed,
      "--white-background": c.white_background,
      "--image-scale": c.image_scale,
    }

  def save_checkpoint(self, ses: Session) -> None:
    ses.save(self.state, self.meta())

  def restore(self, ses: Session) -> bool:
    """--resume: the newest readable checkpoint of this run (Session.restore); False: none."""

    def template(meta: dict) -> TrainState:
      return init_state(
        jax.random.key(self.cfg.seed),
        self.model,
        self.flame0,
        self.optimizer,
        capacity=int(meta["capacity"]),
        sh_degree=self.cfg.sh_degree,
      )

    got = ses.restore(template)
    if got is None:
      return False
    state, meta = got
    self.state = self.placed(state)
    self.capacity_ctl.value = float(meta.get("isect_per_gaussian", self.isect))
    self.densify_log = list(meta.get("densify", []))
    return True

  # -- evaluation ---------------------------------------------------------------------------------
  def evaluate(self, split: str, it: int, save_images: int = 0, writer=None) -> dict | None:
    ds = self.eval_ds.get(split)
    if ds is None or len(ds) == 0:
      return None
    # without the view mesh (evaluation renders its own chunks), from this process's copy of the
    # state on one device (the per-Gaussian arrays are split over the run's devices)
    st = parallel.local(self.state)
    if self.cfg.lpips_weights is not None and not hasattr(self, "_lpips"):
      self._lpips = load_lpips(self.cfg.lpips_weights)
    rc = dataclasses.replace(self.render_config(self.sh_degree_at(it)), mesh=None)
    res = evaluate_split(
      st.avatar,
      self.model_local,
      st.flame,
      ds,
      rc,
      max_frames=self.cfg.eval_max_frames,
      lpips_params=getattr(self, "_lpips", None),
      lpips_input=self.cfg.lpips_input,
      save_dir=self.out / "eval" / f"iteration_{it}" / split if save_images else None,
      save_images=save_images,
    )
    if writer is not None:
      for k, v in res["mean"].items():
        writer.add_scalar(f"{split}/{k}", v, it)
    return res

  # -- export -----------------------------------------------------------------------------------
  def export(self, it: int) -> Path:
    d = self.out / "point_cloud" / f"iteration_{it}"
    d.mkdir(parents=True, exist_ok=True)
    save_avatar_ply(d / "point_cloud.ply", self.state.avatar, sh_degree=self.cfg.sh_degree)
    save_flame_npz(d / "flame_param.npz", self.flame0, self.state.flame)
    t = self.cfg.world_ply_timestep
    if t is not None:
      save_world_ply(
        d / f"world_timestep_{t:05d}.ply",
        self.state.avatar,
        pose_frames(self.model, self.state.flame, jnp.asarray(t)),
        sh_degree=self.cfg.sh_degree,
      )
    return d

  # -- main loop --------------------------------------------------------------------------------
  def run(self) -> dict:
    c = self.cfg
    if c.eval_max_frames is not None and c.eval_max_frames < 1:
      raise InputError(
        f"--eval-max-frames {c.eval_max_frames}: evaluate at least one frame per split (leave it unset for all frames)"
      )
    with Session.from_flags(
      c, what="gaedit reconstruct", inputs={"--data": c.data}, identity=self.resume_identity()
    ) as ses:
      return self._run(ses)

  def _run(self, ses: Session) -> dict:
    c = self.cfg
    primary = ses.primary  # multi-host: process 0 writes logs, exports, summaries
    self.restore(ses)
    start = int(self.state.step)
    if primary:
      write_json(
        self.out / "cfg.json",
        dict(
          config=jsonable(dataclasses.asdict(c)),
          data=str(Path(c.data).absolute()),
          flame_model=str(resolve_flame_path(c.data, c.flame_model).absolute()),
          extent=self.extent,
        ),
      )
    writer, bar = ses.begin(
      total=c.iterations, desc="reconstruct", tensorboard=c.run.tensorboard, progress=c.run.progress
    )
    end = c.iterations if c.run.stop_after is None else min(c.iterations, c.run.stop_after)
    n = len(self.train_ds)
    pending: list[tuple[int, dict]] = []
    compiles = CompileCounter.snapshot()

    # the decoder threads work this many iterations ahead of the batch being made
    ahead = 4 * c.data_workers

    def read_ahead(j: int) -> None:
      idx = frame_order(n, c.batch_size, c.seed, j)
      if self.frames is not None:  # frames already on the device are not read again
        idx = idx[~self.frames.written[idx]]
      self.train_ds.read_ahead(idx, c.data_workers)

    def make_batch(it: int):  # in the prefetch thread, in order: the batch is a pure function of `it`
      if c.data_workers:  # the first batch starts the window, each later one its far end
        for j in range(it if it == start + 1 else it + ahead, min(it + ahead, end) + 1):
          read_ahead(j)
      idx = frame_order(n, c.batch_size, c.seed, it)
      if self.frames is not None:
        return self.frames.batch(idx)
      b = self.train_ds.batch(idx)
      return parallel.shard_views((b.image, b.camera, b.timestep), self.mesh)

    # --prefetch counts calls: a call of k steps takes k batches at once
    depth = c.run.prefetch * self.steps_per_call
    with ses.guard(lambda: self.state, self.meta), Prefetcher(make_batch, start + 1, end, depth) as batches:
      it = start
      while it < end:
        k = self.steps_in_call(it + 1, end, ses.every)
        first, it = it + 1, it + k
        ses.begin_step()  # a Ctrl-C now waits for ses.done(it): the step consumes the state
        if k == 1:
          img, cam, ts = batches.get(it)
          step = self.step_fn(self.sh_degree_at(it))
          self.state, m = step(self.state, img, cam, ts, self.model, self.background)
          pending.append((it, m))
        else:  # iterations first..it in one call; nothing happens on the host between them
          views = tuple(batches.get(j) for j in range(first, it + 1))
          step = self.step_fn(self.sh_degree_at(it), several=True)
          self.state, m = step(self.state, views, self.model, self.background)
          pending.append((range(first, it + 1), m))
        # The host work after an iteration. `steps_in_call` lists the same conditions so that no call
        # of several steps spans one: a new kind of host work here must be added there too.
        dens, reset = self.densify_now(it)
        if not (dens or reset):
          ses.done(it)
        if dens or reset or it % c.run.log_interval == 0 or it == end:
          # one host read of the recent metrics (not in the step); a capacity shrink waits for a
          # recompilation that is due anyway (densification, a new SH degree)
          self._flush(pending, writer, bar, dens or self.sh_degree_at(it + 1) != self.sh_degree_at(it))
          pending = []
        if dens or reset:
          self._densify(it, dens, reset)
          ses.done(it)
          if writer is not None and dens:
            writer.add_scalar("train/num_gaussians", int(self.state.avatar.num_active), it)
        if c.save_interval and it % c.save_interval == 0 and primary:
          self.export(it)
        if c.eval_interval and it % c.eval_interval == 0 and it != c.iterations and primary:
          for s in self.eval_ds:
            self.evaluate(s, it, save_images=4, writer=writer)
        if ses.due(it, end):
          self.save_checkpoint(ses)
    ses.wait()
    summary = ses.summary(int(self.state.step))  # the whole run, every session since iteration 1
    if bar is not None:
      bar.close()
    comp = CompileCounter.since(compiles)
    result: dict = dict(
      iterations=summary["iterations"],
      train_seconds=summary["seconds"],
      num_gaussians=int(self.state.avatar.num_active),
      densify=self.densify_log,
      sessions=summary["sessions"],
      resumed_at=summary["resumed_at"],
      compilations=dict(count=comp["count"], seconds=round(comp["seconds"], 2), cache_hits=comp["cache_hits"]),
      isect_per_gaussian=self.isect,
    )
    if int(self.state.step) >= c.iterations and primary:
      it = c.iterations
      result["export"] = str(self.export(it))
      for s in self.eval_ds:
        r = self.evaluate(s, it, save_images=4, writer=writer)
        if r is not None:
          write_json(self.out / f"results_{s}.json", r)
          result[s] = r["mean"]
    if primary:
      write_json(self.out / "train_summary.json", jsonable(result))
    return result

  def _flush(self, pending, writer, bar, settle: bool = True) -> None:
    flushed = flush_metrics(
      pending,
      writer,
      bar,
      self.history,
      tag="train",
      scalars=("loss", "l1", "dssim", "psnr", "reg_xyz", "reg_scale"),
      postfix=lambda m: dict(loss=f"{m['loss']:.4f}", psnr=f"{m['psnr']:.2f}", gaussians=int(m["num_gaussians"])),
    )
    for msg in self.capacity_ctl.update(flushed, settle=settle):  # a new capacity recompiles the step
      print(msg)


__all__ = [
  "ReconstructConfig",
  "TrainState",
  "StepConfig",
  "train_step",
  "make_step",
  "make_optimizer",
  "init_state",
  "Trainer",
]
