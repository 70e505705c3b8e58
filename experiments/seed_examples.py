"""The seed examples of GaussianAvatar-Editor (its README) on NeRSemble, end to end.

For users who have NeRSemble as preprocessed by GaussianAvatars (VHAP export folders such as
`306_EMO-1_v16_DS2-0.5x_lmkSTAR_teethV3_SMOOTH_offsetS_whiteBg_maskBelowLine`, and the
`UNION10_306_EMO1234EXP234589_v16_..._whiteBg_maskBelowLine` folders for reconstruction) and
the weights (InstructPix2Pix, LPIPS-VGG, CLIP ViT-L/14). Per example (table `EXAMPLES`):

1. avatar: an existing `gaedit reconstruct` folder per subject (--avatars DIR: DIR/<id> or a
   child whose name contains the id) or, with --reconstruct, trained from the UNION10 folder;
2. source: the unedited avatar exported on the editing sequence (a 0-iteration edit: the same
   FLAME tracking the edit starts from, METHOD §5.2), so source and edit render the same frames;
3. edit: `gaedit edit --data <sequence> --prompt <instruction>` (1000 iterations, METHOD §5.1);
4. render (source and edit): novel view = the `val` split (camera 8, training timesteps),
   self-reenactment = the `test` split (held-out timesteps; camera 8 by default, so that frames
   are consecutive for CLIP-C), cross-identity = `gaedit render --target <460 FREE>`, its
   camera-8 (`val`) frames;
5. CLIP-S / CLIP-C of each set (`gaedit eval`, FIELD.md 3.1-3.2) with the captions of the table;
6. OUT/summary.md and OUT/summary.json.

Finished steps leave a marker (OUT/**/.seed_done_*) and are skipped on a re-run; an interrupted
reconstruction or edit resumes from its checkpoint. Delete OUT/<example> to redo one.

  python experiments/seed_examples.py --nersemble-root /data/nersemble --avatars /models \\
      --ip2p weights/instruct-pix2pix --lpips-weights weights/lpips \\
      --clip weights/clip-vit-large-patch14 --out seed_out
  python experiments/seed_examples.py ... --examples 306 --dry-run     # print the plan only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from gaedit_jax.flags import as_flags, build


@dataclasses.dataclass(frozen=True)
class Example:
  key: str
  subject: str
  sequence: str
  prompt: str
  source_caption: str
  target_caption: str


# Prompts from the original's README (METHOD §5.1). Captions are ours (CLIP-S needs a source and a
# target caption, FIELD.md 3.1): "person" where the README does not say the subject's gender.
EXAMPLES = (
  Example("306_elf", "306", "EMO-1", "Turn him into the Tolkien Elf", "a photo of a man", "a photo of a Tolkien elf"),
  Example(
    "104_bearded",
    "104",
    "EXP-5",
    "What would she look like as a bearded man?",
    "a photo of a woman",
    "a photo of a bearded man",
  ),
  Example(
    "264_egyptian",
    "264",
    "EXP-5",
    "Make it an Egyptian sculpture",
    "a photo of a person",
    "a photo of an Egyptian sculpture",
  ),
  Example(
    "304_old",
    "304",
    "EXP-2",
    "The human should look 100 years old",
    "a photo of a person",
    "a photo of a 100 year old person",
  ),
  Example(
    "304_facepaint", "304", "EXP-2", "Apply face paint", "a photo of a person", "a photo of a person with face paint"
  ),
)
DRIVER = ("460", "FREE")  # cross-identity reenactment driver (METHOD §9)
SETS = ("nv", "self", "cross")
SET_NAMES = {"nv": "novel view", "self": "self-reenactment", "cross": "cross-identity"}
# GAE Table 1 as FIELD.md section 0 transcribes it [secondary]: CLIP-S / CLIP-C.
PAPER = {"nv": (0.275, 0.978), "self": (0.081, 0.951), "cross": (0.081, 0.951)}


# ------------------------------------------------------------------------------------------------
# Finding the data
# ------------------------------------------------------------------------------------------------


def sequence_pattern(subject: str, sequence: str) -> str:
  return f"{subject}_{sequence}_*whiteBg*"


def union_pattern(subject: str) -> str:
  return f"UNION*_{subject}_*whiteBg*"


def find_folder(root: Path, pattern: str) -> Path | None:
  """The dataset folder (it holds transforms_train.json) matching `pattern` under root; with
  several (e.g. other downsamplings), the NeRSemble-at-GA-resolution one (DS2-0.5x) first."""
  hits = sorted(p for p in root.glob(pattern) if (p / "transforms_train.json").is_file())
  if not hits:
    return None
  hits.sort(key=lambda p: ("DS2-0.5x" not in p.name, p.name))
  if len(hits) > 1:
    print(f"note: {len(hits)} folders match {root / pattern}; using {hits[0].name}")
  return hits[0]


def find_avatar(avatars: Path, subject: str) -> Path | None:
  """DIR/<id>, or the child folder of DIR whose name contains the id as a number token and which
  is a `gaedit reconstruct` output (cfg.json)."""
  exact = avatars / subject
  if (exact / "cfg.json").is_file():
    return exact
  if not avatars.is_dir():
    return None
  tok = re.compile(rf"(?<![0-9]){re.escape(subject)}(?![0-9])")
  hits = sorted(p for p in avatars.iterdir() if tok.search(p.name) and (p / "cfg.json").is_file())
  if len(hits) > 1:
    raise SystemExit(
      f"seed_examples: several avatars for subject {subject} in {avatars}: "
      f"{[h.name for h in hits]}; keep one or name it {exact}"
    )
  return hits[0] if hits else None


# ------------------------------------------------------------------------------------------------
# The plan: steps with their `gaedit` command line (printed by --dry-run) and a Python call
# ------------------------------------------------------------------------------------------------


def as_command(sub: str, cfg: Any) -> str:
  """The `gaedit SUB ...` command line equivalent to a config dataclass (non-default fields)."""
  return f"gaedit {sub} {shlex.join(as_flags(cfg))}"


@dataclasses.dataclass
class Step:
  title: str
  sub: str  # the gaedit subcommand
  config: Any  # its config dataclass
  fn: Callable[[Any], Any]
  marker: Path  # written after success; the step is skipped while it exists

  @property
  def command(self) -> str:
    return as_command(self.sub, self.config)

  def run(self) -> Any:
    return self.fn(self.config)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _NoEditor:
  """For the 0-iteration export of the unedited avatar: no edit is ever made, so no IP2P load.
  (A pytree without leaves, so that EditRun may place it on devices like a real editor.)"""

  square_size: int | None = dataclasses.field(default=None, metadata=dict(static=True))


def render_folder(render_out: Path, set_name: str, iteration: int, camera_index: int | None, driver: Path) -> Path:
  """Where `gaedit render` writes the frames of a set (commands/render.py's naming)."""
  tag = f"ours_{iteration}"
  suffix = "" if camera_index is None else f"_{camera_index}"
  if set_name == "nv":
    return render_out / f"val{suffix}" / tag / "renders"
  if set_name == "self":
    return render_out / f"test{suffix}" / tag / "renders"
  return render_out / driver.name / "val" / tag / "renders"  # cross: the driver's camera-8 frames


def build_plan(a: argparse.Namespace, examples: list[Example]) -> tuple[list[Step], dict, list[str]]:
  """(steps, {example key: {set: (source renders, edited renders, eval json)}}, missing paths)."""
  from gaedit_jax.commands.edit import main as edit
  from gaedit_jax.commands.eval import EvalConfig
  from gaedit_jax.commands.reconstruct import main as reconstruct
  from gaedit_jax.commands.render import RenderConfigCLI
  from gaedit_jax.commands.render import main as render
  from gaedit_jax.edit.loop import EditConfig
  from gaedit_jax.reconstruct import ReconstructConfig

  root, out = Path(a.nersemble_root), Path(a.out)
  missing: list[str] = []

  def need(path: Path | None, what: str, placeholder: Path | None = None) -> Path:
    if path is None or not Path(path).exists():
      missing.append(what if path is None else f"{what}: {path}")
      return Path(path) if path is not None else placeholder
    return Path(path)

  def data(pattern: str) -> Path:
    p = find_folder(root, pattern) if root.is_dir() else None
    if p is None:
      missing.append(f"dataset folder {root / pattern} (with transforms_train.json)")
      return root / pattern
    return p

  if not root.is_dir():
    missing.append(f"--nersemble-root {root} (not a folder)")
  need(Path(a.ip2p), "--ip2p InstructPix2Pix weights folder")
  need(Path(a.clip), "--clip CLIP model folder")
  if a.lpips_weights:
    need(Path(a.lpips_weights), "--lpips-weights folder")
  if a.flame_model:
    need(Path(a.flame_model), "--flame-model")
  driver = data(sequence_pattern(*DRIVER))
  cam = None if a.camera_index < 0 else a.camera_index
  steps: list[Step] = []
  evals: dict[str, dict] = {}
  avatars: dict[str, Path] = {}
  sources: dict[tuple[str, str], dict[str, Path]] = {}

  def add(title, sub, cfg, fn, marker):
    steps.append(Step(title, sub, cfg, fn, Path(marker)))

  def renders(model: Path, render_out: Path, iteration: int, title: str) -> dict[str, Path]:
    rc = RenderConfigCLI(model=model, out=render_out, splits=("val", "test"), camera_index=cam, max_frames=a.max_frames)
    add(f"{title}: novel view + self-reenactment", "render", rc, render, render_out / ".seed_done_splits")
    # all of the driver's splits are rendered (`gaedit render --target`), bounded by --cross-max-frames
    xc = RenderConfigCLI(model=model, out=render_out, target=driver, max_frames=a.cross_max_frames)
    add(f"{title}: cross-identity ({DRIVER[0]} {DRIVER[1]})", "render", xc, render, render_out / ".seed_done_cross")
    return {s: render_folder(render_out, s, iteration, cam, driver) for s in SETS}

  for ex in examples:
    seq = data(sequence_pattern(ex.subject, ex.sequence))
    # 1. the avatar of the subject
    if ex.subject not in avatars:
      if a.reconstruct:
        av = out / "avatars" / ex.subject
        union = data(union_pattern(ex.subject))
        if not a.flame_model:  # the synthetic data ships its FLAME model; NeRSemble needs FLAME 2023
          from gaedit_jax.data.synthetic import FLAME_FILE

          if root.is_dir() and union.is_dir() and not (union / FLAME_FILE).is_file():
            missing.append(f"--flame-model (FLAME 2023 pkl; {union / FLAME_FILE} does not exist)")
        rc = build(
          ReconstructConfig,
          data=union,
          out=av,
          flame_model=Path(a.flame_model) if a.flame_model else None,
          iterations=a.recon_iterations,
          lpips_weights=_path(a.lpips_weights),
          progress=not a.quiet,
          tensorboard=not a.quiet,
          resume=True,
        )
        add(f"reconstruct subject {ex.subject}", "reconstruct", rc, reconstruct, av / ".seed_done")
      else:
        found = find_avatar(Path(a.avatars), ex.subject)
        av = need(
          found,
          f"avatar of subject {ex.subject}: a `gaedit reconstruct` folder "
          f"{Path(a.avatars) / ex.subject} (or use --reconstruct)",
          Path(a.avatars) / ex.subject,
        )
      avatars[ex.subject] = av
    av = avatars[ex.subject]
    common = dict(
      avatar=av,
      data=seq,
      ip2p=Path(a.ip2p),
      ip2p_size=a.ip2p_size,
      ip2p_dtype=a.ip2p_dtype,
      diffusion_steps=a.diffusion_steps,
      seed=a.seed,
      lpips_weights=_path(a.lpips_weights),
      progress=not a.quiet,
      tensorboard=not a.quiet,
    )
    # 2. the unedited avatar on the editing sequence (shared by the examples of one sequence),
    # 4. its renders
    sk = (ex.subject, ex.sequence)
    if sk not in sources:
      src = out / "sources" / f"{ex.subject}_{ex.sequence}"
      ec = build(
        EditConfig,
        out=src / "model",
        iterations=0,
        prompt=ex.prompt,
        checkpoint_interval=0,
        dump_interval=0,
        overwrite=True,
        **common,
      )
      add(
        f"export the unedited avatar {ex.subject} on {seq.name}",
        "edit",
        ec,
        _export_source,
        src / "model" / ".seed_done",
      )
      sources[sk] = renders(src / "model", src / "renders", 0, f"render source {ex.subject} {ex.sequence}")
    # 3. the edit, 4. its renders
    exo = out / ex.key
    ec = build(EditConfig, out=exo / "edited", prompt=ex.prompt, iterations=a.iterations, resume=True, **common)
    add(f"edit {ex.key}: {ex.prompt!r}", "edit", ec, edit, exo / "edited" / ".seed_done")
    edited = renders(exo / "edited", exo / "renders", a.iterations, f"render edit {ex.key}")
    # 5. CLIP metrics per set
    evals[ex.key] = {}
    for s in SETS:
      js = exo / "metrics" / f"clip_{s}.json"
      vc = EvalConfig(
        source=str(sources[sk][s]),
        edited=str(edited[s]),
        source_caption=ex.source_caption,
        target_caption=ex.target_caption,
        clip=str(a.clip),
        out=str(js),
      )
      add(f"CLIP-S / CLIP-C {ex.key}, {SET_NAMES[s]}", "eval", vc, _evaluate, js)
      evals[ex.key][s] = js
  return steps, evals, list(dict.fromkeys(missing))  # a sequence shared by two examples: once


def _path(p: str | None) -> Path | None:
  return Path(p) if p else None


def _evaluate(cfg) -> None:
  """`gaedit eval`, or a note in its JSON when a set was not rendered (e.g. a sequence folder
  without transforms_test.json), so that the other sets still reach the summary."""
  from gaedit_jax.commands.eval import main as evaluate

  absent = [p for p in (cfg.source, cfg.edited) if not Path(p).is_dir()]
  if absent:
    print(f"warning: no renders in {absent}; this set is left out of the summary")
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps({"clip_edit": None, "missing": absent}, indent=2))
    return
  evaluate(cfg)


def _export_source(cfg) -> None:
  from gaedit_jax.edit.loop import EditRun

  cfg = dataclasses.replace(cfg, lambda_lpips=0.0, lpips_weights=None)  # no loss is evaluated
  EditRun(cfg, editor=_NoEditor()).run()


# ------------------------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------------------------


def summarize(examples: list[Example], evals: dict, out: Path) -> dict:
  rows = []
  for ex in examples:
    row = dict(
      example=ex.key,
      subject=ex.subject,
      sequence=ex.sequence,
      prompt=ex.prompt,
      source_caption=ex.source_caption,
      target_caption=ex.target_caption,
    )
    for s in SETS:
      js = evals[ex.key][s]
      m = (json.loads(Path(js).read_text())["clip_edit"] if Path(js).is_file() else None) or {}
      row[s] = dict(
        clip_s=m.get("clip_direction_similarity"),
        clip_c=m.get("clip_direction_consistency"),
        frames=m.get("num_images"),
      )
      row["clip_variant"] = m.get("clip_variant", row.get("clip_variant"))
    rows.append(row)
  mean = {s: {k: _mean([r[s][k] for r in rows]) for k in ("clip_s", "clip_c")} for s in SETS}
  f = lambda v: "-" if v is None or not np.isfinite(v) else f"{v:.3f}"
  lines = [
    "| example | prompt | source -> target caption | "
    + " | ".join(f"{SET_NAMES[s]} CLIP-S / CLIP-C" for s in SETS)
    + " |",
    "|---|---|---|" + "---|" * len(SETS),
  ]
  for r in rows:
    lines.append(
      f"| {r['example']} ({r['subject']} {r['sequence']}) | {r['prompt']} | "
      f"{r['source_caption']} -> {r['target_caption']} | "
      + " | ".join(f"{f(r[s]['clip_s'])} / {f(r[s]['clip_c'])} ({r[s]['frames']} frames)" for s in SETS)
      + " |"
    )
  lines.append("| mean | | | " + " | ".join(f"{f(mean[s]['clip_s'])} / {f(mean[s]['clip_c'])}" for s in SETS) + " |")
  lines.append(
    "| GAE paper, Table 1 [secondary, FIELD.md] | | | "
    + " | ".join(f"{PAPER[s][0]:.3f} / {PAPER[s][1]:.3f}" for s in SETS)
    + " |"
  )
  variants = sorted({str(r["clip_variant"]) for r in rows})
  md = (
    "CLIP-S: CLIP direction similarity; CLIP-C: direction consistency of consecutive frames "
    f"(CLIP variant: {', '.join(variants)}). Novel view: camera 8 of the training timesteps; "
    f"self-reenactment: held-out timesteps; cross-identity: driven by {DRIVER[0]} {DRIVER[1]} (camera 8).\n\n"
    + "\n".join(lines)
    + "\n"
  )
  summary = dict(examples=rows, mean=mean, paper_table1=PAPER)
  out.mkdir(parents=True, exist_ok=True)
  (out / "summary.md").write_text(md)
  (out / "summary.json").write_text(json.dumps(summary, indent=2))
  print("\n" + md)
  return summary


def _mean(xs):
  xs = [x for x in xs if x is not None and np.isfinite(x)]
  return float(np.mean(xs)) if xs else None


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--nersemble-root", required=True, help="folder holding the GA-preprocessed NeRSemble folders")
  g = ap.add_mutually_exclusive_group(required=True)
  g.add_argument("--avatars", help="folder of reconstructed avatars (gaedit reconstruct outputs), DIR/<subject id>")
  g.add_argument("--reconstruct", action="store_true", help="train the avatars from the UNION10 folders")
  ap.add_argument("--recon-iterations", type=int, default=600_000, help="with --reconstruct (GA: 600k)")
  ap.add_argument("--flame-model", help="FLAME 2023 pkl (for --reconstruct)")
  ap.add_argument("--ip2p", required=True, help="InstructPix2Pix weights folder (timbrooks/instruct-pix2pix layout)")
  ap.add_argument("--lpips-weights", help="LPIPS-VGG weights folder (without: the LPIPS loss is skipped)")
  ap.add_argument("--clip", default="weights/clip-vit-large-patch14", help="CLIP model folder for the metrics")
  ap.add_argument("--examples", nargs="+", help="subject ids (or example keys) to run; default: all")
  ap.add_argument("--iterations", type=int, default=1000, help="edit iterations (METHOD §5.1: 1000)")
  ap.add_argument("--ip2p-size", type=int, default=512)
  ap.add_argument("--ip2p-dtype", default="float32", choices=("float32", "bfloat16"))
  ap.add_argument("--diffusion-steps", type=int, default=20)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument(
    "--camera-index", type=int, default=8, help="camera of the novel-view / self-reenactment renders (-1: all cameras)"
  )
  ap.add_argument("--max-frames", type=int, default=None, help="frames per novel-view / self-reenactment set")
  ap.add_argument("--cross-max-frames", type=int, default=300, help="frames per split of the driver")
  ap.add_argument("--out", default="seed_examples_out")
  ap.add_argument("--quiet", action="store_true", help="no progress bars or TensorBoard logs")
  ap.add_argument("--dry-run", action="store_true", help="print the plan (gaedit commands) and exit")
  return ap.parse_args(argv)


def select(keys: list[str] | None) -> list[Example]:
  if not keys:
    return list(EXAMPLES)
  chosen = [ex for ex in EXAMPLES if ex.subject in keys or ex.key in keys]
  unknown = set(keys) - {ex.subject for ex in EXAMPLES} - {ex.key for ex in EXAMPLES}
  if unknown or not chosen:
    raise SystemExit(
      f"seed_examples: unknown examples {sorted(unknown)}; choose from "
      f"{[ex.subject for ex in EXAMPLES]} or {[ex.key for ex in EXAMPLES]}"
    )
  return chosen


def main(argv=None) -> dict | None:
  a = parse_args(argv)
  examples = select(a.examples)
  steps, evals, missing = build_plan(a, examples)
  if a.dry_run:
    print(f"# {len(steps)} steps for {len(examples)} example(s); outputs in {a.out}")
    for m in missing:
      print(f"# MISSING {m}")
    for i, s in enumerate(steps, 1):
      print(f"# [{i}/{len(steps)}] {s.title}" + (" (done, skipped)" if s.marker.exists() else ""))
      print(s.command)
    return None
  if missing:
    raise SystemExit("seed_examples: missing inputs:\n  " + "\n  ".join(missing))
  for i, s in enumerate(steps, 1):
    if s.marker.exists():
      print(f"[{i}/{len(steps)}] {s.title}: done, skipped")
      continue
    print(f"[{i}/{len(steps)}] {s.title}\n  {s.command}", flush=True)
    t0 = time.perf_counter()
    s.run()
    print(f"[{i}/{len(steps)}] {s.title}: {time.perf_counter() - t0:.1f} s", flush=True)
    if s.marker.suffix != ".json":  # eval steps: their JSON output is the marker
      s.marker.parent.mkdir(parents=True, exist_ok=True)
      s.marker.write_text("done\n")
  return summarize(examples, evals, Path(a.out))


if __name__ == "__main__":
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  main()
