"""Edits made outside the loop: frames edited by any 2D editor, and an external command.

* The frames manifest (`gaedit export-frames`): a folder of PNG renders of the unedited avatar plus
  `manifest.json` (format "gaedit-frames", version 1) listing, per frame, the image file, the view
  (camera_index, timestep, the transforms json and the frame's position in it, the photo's path) and
  the camera itself (world_to_camera, fx, fy, cx, cy, width, height at the run's image scale).
* `--editor frames --edited DIR`: `load_frames_editor` reads DIR/manifest.json (or
  --frames-manifest) and the edited images in DIR named as the manifest's files; a frame whose file
  is missing is not edited. Images of another size are resized to the run's (area average down,
  bilinear up) when the aspect ratio matches within 1%, else an InputError. RGBA is composited over
  the run's background. The result is a `FramesEditor` (edit.editors).
* `--editor command --edit-command "CMD {input} {output} ..."` (Instruct-NeRF2NeRF's iterative
  dataset update, with any program): every --edit-every iterations `CommandEditor.update` renders
  --edit-command-batch training views with the current avatar, writes them (and the photos) to
  OUT/edit_command/<iteration>/{input,photos}/ with a manifest, runs the command once (no shell:
  the template is split with shlex and the placeholders {input} {output} {photos} {manifest}
  {iteration} are replaced inside the tokens; --edit-command-shell runs it through /bin/sh with the
  paths quoted), and reads {output}/<file> for each frame. A failing command (exit status, timeout,
  missing or unreadable images) is reported with its output and the frames; the table keeps the
  last good edit of every frame and the run goes on, or, with --strict, stops with
  `EditCommandError` (an InputError: `gaedit` exits with status 2). --edit-async runs the command in
  a background thread while the loop trains on the previous edits (the first batch is waited for).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from gaedit_jax.edit.editors import FramesEditor
from gaedit_jax.errors import InputError
from gaedit_jax.flags import check_flags as _check_numbers
from gaedit_jax.io.media import read_image, save_png
from gaedit_jax.train.run import file_id

MANIFEST = "manifest.json"
FORMAT = "gaedit-frames"
VERSION = 1
PLACEHOLDERS = ("input", "output", "photos", "manifest", "iteration")


class EditCommandError(InputError):
  """The external edit command failed and --strict was given."""


def frame_file(camera_index: int, timestep: int) -> str:
  """Image file name of a view: <timestep>_<camera>.png (the dataset's own naming order)."""
  return f"{int(timestep):05d}_{int(camera_index):02d}.png"


def frame_entries(dataset, indices: Sequence[int]) -> list[dict]:
  """Manifest entries of dataset frames `indices` (an AvatarDataset or SplitUnion)."""
  h, w = dataset.image_size
  out = []
  for i in np.asarray(indices).reshape(-1):
    r = dataset.records[int(i)]
    sx, sy = w / r.width, h / r.height
    out.append(
      dict(
        file=frame_file(r.camera_index, r.timestep),
        camera_index=int(r.camera_index),
        timestep=int(r.timestep),
        frame_index=int(i),
        transforms=str(Path(r.json_path).absolute()),
        json_index=int(r.index),
        photo=str(Path(r.image_path).absolute()),
        world_to_camera=np.asarray(r.world_to_camera, np.float64).tolist(),
        fx=float(r.fx * sx),
        fy=float(r.fy * sy),
        cx=float(r.cx * sx),
        cy=float(r.cy * sy),
        width=int(w),
        height=int(h),
      )
    )
  return out


def write_manifest(folder: str | os.PathLike, frames: list[dict], **meta) -> Path:
  p = Path(folder) / MANIFEST
  p.parent.mkdir(parents=True, exist_ok=True)
  doc = dict(format=FORMAT, version=VERSION, **meta, frames=frames)
  tmp = p.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(doc, indent=1))
  tmp.replace(p)
  return p


def read_manifest(path: str | os.PathLike, flag: str = "--edited") -> dict:
  """A frames manifest, checked: one-line InputError naming the file and the field."""
  p = Path(path)
  if p.is_dir():
    p = p / MANIFEST
  if not p.is_file():
    raise InputError(f"{flag}: no frames manifest {p} (write one with gaedit export-frames)")
  try:
    doc = json.loads(p.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise InputError(f"{flag} {p}: not a readable JSON file ({e})") from None
  if not isinstance(doc, dict) or doc.get("format") != FORMAT:
    raise InputError(f"{flag} {p}: field 'format' must be {FORMAT!r} (a gaedit export-frames manifest)")
  if doc.get("version") != VERSION:
    raise InputError(f"{flag} {p}: field 'version' must be {VERSION}, got {doc.get('version')!r}")
  frames = doc.get("frames")
  if not isinstance(frames, list):
    raise InputError(f"{flag} {p}: field 'frames' must be a list")
  for k, f in enumerate(frames):
    if not isinstance(f, dict):
      raise InputError(f"{flag} {p}: frames[{k}] must be an object")
    for key, typ in (("file", str), ("camera_index", int), ("timestep", int)):
      if not isinstance(f.get(key), typ) or isinstance(f.get(key), bool):
        raise InputError(f"{flag} {p}: frames[{k}].{key} must be a {typ.__name__}")
    if Path(f["file"]).name != f["file"] or f["file"] in ("", ".", ".."):
      raise InputError(f"{flag} {p}: frames[{k}].file must be a plain file name, got {f['file']!r}")
  doc["path"] = str(p)
  return doc


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
  from PIL import Image

  im = Image.fromarray(img)
  down = w < img.shape[1]
  return np.asarray(im.resize((w, h), Image.Resampling.BOX if down else Image.Resampling.BILINEAR))


def read_edited_image(path: Path, size: tuple[int, int], background, flag: str) -> np.ndarray:
  """uint8 [H,W,3] at the run's size (h, w): RGBA composited over `background` (float [3] in [0,1]);
  another size with the same aspect ratio (1%) is resized, another aspect ratio is an InputError."""
  try:
    img = read_image(path)
  except (OSError, ValueError) as e:
    raise InputError(f"{flag} {path}: cannot read the image ({e})") from None
  if img.shape[-1] == 4:
    a = img[..., 3:].astype(np.float32) / 255.0
    rgb = img[..., :3].astype(np.float32) * a + (1.0 - a) * 255.0 * np.asarray(background, np.float32)
    img = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
  h, w = size
  if img.shape[:2] != (h, w):
    if abs(img.shape[1] / img.shape[0] - w / h) > 0.01 * (w / h):
      raise InputError(
        f"{flag} {path}: the image is {img.shape[1]}x{img.shape[0]} but the run's views are {w}x{h} "
        "(another aspect ratio: crop or pad it back to the exported frame)"
      )
    img = _resize(img, h, w)
  return img


def _view_rows(dataset) -> dict[tuple[int, int], int]:
  return {(int(c), int(t)): i for i, (c, t) in enumerate(zip(dataset.camera_indices, dataset.timesteps))}


def load_frames_editor(
  folder: str | os.PathLike, dataset, *, manifest: str | os.PathLike | None = None, flag: str = "--edited"
) -> tuple[FramesEditor, dict]:
  """A FramesEditor of the edited images in `folder` for the training views of `dataset`. Returns
  (editor, report: edited / missing / not_training counts)."""
  folder = Path(folder)
  if not folder.is_dir():
    raise InputError(f"{flag} {folder}: no such folder")
  doc = read_manifest(manifest if manifest is not None else folder, "--frames-manifest" if manifest else flag)
  rows = _view_rows(dataset)
  size = tuple(dataset.image_size)
  imgs, cams, ts = [], [], []
  missing, foreign, seen = [], [], set()
  for f in doc["frames"]:
    key = (f["camera_index"], f["timestep"])
    p = folder / f["file"]
    if key not in rows:
      foreign.append(f["file"])
      continue
    if not p.is_file():
      missing.append(f["file"])
      continue
    if key in seen:
      continue  # the same view listed twice: the first entry wins
    seen.add(key)
    imgs.append(read_edited_image(p, size, dataset.background, flag))
    cams.append(key[0])
    ts.append(key[1])
  if not imgs:
    raise InputError(
      f"{flag} {folder}: none of the {len(doc['frames'])} frames of {doc['path']} is an edited image of a "
      f"training view of {dataset.root} ({len(missing)} files missing, {len(foreign)} views not in training)"
    )
  if foreign:
    warnings.warn(
      f"{flag} {folder}: {len(foreign)} frames are not training views of {dataset.root} and are ignored "
      f"(e.g. {foreign[0]})",
      stacklevel=2,
    )
  ed = FramesEditor.from_arrays(np.stack(imgs), np.ones(len(imgs), bool), cams, ts)
  return ed, dict(edited=len(imgs), missing=len(missing), not_training=len(foreign), manifest=doc["path"])


# ------------------------------------------------------------------------------------------------
# External command
# ------------------------------------------------------------------------------------------------


def check_template(template: str, shell: bool = False) -> list[str]:
  """The command template's tokens (shlex); it must name {input} and {output}."""
  try:
    tokens = shlex.split(template)
  except ValueError as e:
    raise InputError(f"--edit-command: cannot split {template!r} into arguments ({e})") from None
  if not tokens:
    raise InputError("--editor command needs --edit-command 'PROGRAM ... {input} {output}'")
  for name in ("input", "output"):
    if "{" + name + "}" not in template:
      raise InputError(
        f"--edit-command {template!r}: the template must contain {{{name}}} (placeholders: "
        + " ".join("{" + p + "}" for p in PLACEHOLDERS)
        + ")"
      )
  return tokens


def command_argv(template: str, values: dict[str, str], shell: bool = False):
  """argv list (placeholders replaced inside each shlex token; no shell), or one shell string with
  the values quoted."""
  if shell:
    s = template
    for k, v in values.items():
      s = s.replace("{" + k + "}", shlex.quote(v))
    return s
  out = []
  for tok in shlex.split(template):
    for k, v in values.items():
      tok = tok.replace("{" + k + "}", v)
    out.append(tok)
  return out


@dataclasses.dataclass
class CommandResult:
  iteration: int
  frames: list[int]  # dataset positions
  images: dict[int, np.ndarray]  # position -> uint8 image (the good ones)
  error: str | None  # one line, or None
  output: str  # the command's stdout + stderr (tail)
  seconds: float


def _tail(text: str, n: int = 800) -> str:
  t = " ".join(text.split())
  return t if len(t) <= n else "..." + t[-n:]


class CommandEditor:
  """Host side of `--editor command`: a table of the latest good edit of every training view,
  refreshed by running the external command on batches of current renders (see the module
  docstring). `editor()` is the table as a FramesEditor for the jitted step."""

  def __init__(
    self,
    template: str,
    dataset,
    workdir: str | os.PathLike,
    *,
    every: int = 1,
    batch: int = 8,
    timeout: float = 600.0,
    strict: bool = False,
    asynchronous: bool = False,
    shell: bool = False,
    seed: int = 0,
    keep_jobs: int = 2,
    log: Callable[[str], None] = print,
  ):
    check_template(template, shell)
    self.template, self.dataset, self.workdir = template, dataset, Path(workdir)
    self.every, self.batch, self.timeout = max(int(every), 1), max(int(batch), 1), float(timeout)
    self.strict, self.asynchronous, self.shell, self.seed = strict, asynchronous, shell, int(seed)
    self.keep_jobs, self.log = int(keep_jobs), log
    n = len(dataset)
    h, w = dataset.image_size
    self.images = np.zeros((n, h, w, 3), np.uint8)
    self.valid = np.zeros(n, bool)
    self.failures: list[dict] = []
    self.calls = 0
    self._cursor = 0
    self._pool = concurrent.futures.ThreadPoolExecutor(1) if asynchronous else None
    self._pending: concurrent.futures.Future | None = None
    self._editor: FramesEditor | None = None
    self._jobs: list[Path] = []

  # -- the table --------------------------------------------------------------------------------
  def editor(self) -> FramesEditor:
    if self._editor is None:
      self._editor = FramesEditor.from_arrays(
        self.images, self.valid, self.dataset.camera_indices, self.dataset.timesteps
      )
    return self._editor

  def next_frames(self) -> np.ndarray:
    """The next batch of dataset positions: shuffled passes over the training views (seeded)."""
    n = len(self.dataset)
    out = []
    while len(out) < min(self.batch, n):
      epoch, k = divmod(self._cursor, n)
      out.append(int(np.random.default_rng([self.seed, 7, epoch]).permutation(n)[k]))
      self._cursor += 1
    return np.asarray(out)

  def due(self, it: int) -> bool:
    return (it - 1) % self.every == 0

  # -- one command call -------------------------------------------------------------------------
  def _prepare(self, it: int, frames: np.ndarray, renders: np.ndarray) -> dict:
    d = self.workdir / f"{it:06d}"
    if d.exists():
      shutil.rmtree(d)
    dirs = {k: d / k for k in ("input", "output", "photos")}
    for p in dirs.values():
      p.mkdir(parents=True)
    entries = frame_entries(self.dataset, frames)
    photos = np.asarray(self.dataset.batch(frames).image)
    for e, r, ph in zip(entries, renders, photos):
      save_png(dirs["input"] / e["file"], r)
      save_png(dirs["photos"] / e["file"], ph)
    man = write_manifest(dirs["input"], entries, iteration=it, photos=str(dirs["photos"]))
    self._jobs.append(d)
    while len(self._jobs) > self.keep_jobs:  # our own scratch folders only
      shutil.rmtree(self._jobs.pop(0), ignore_errors=True)
    values = {k: str(v) for k, v in dirs.items()}
    values.update(manifest=str(man), iteration=str(it))
    return dict(it=it, frames=[int(f) for f in frames], entries=entries, dir=d, values=values)

  def _execute(self, job: dict) -> CommandResult:
    t0 = time.perf_counter()
    argv = command_argv(self.template, job["values"], self.shell)
    it, frames = job["it"], job["frames"]
    error, output = None, ""
    try:
      p = subprocess.run(
        argv, shell=self.shell, capture_output=True, text=True, timeout=self.timeout, stdin=subprocess.DEVNULL
      )
      output = (p.stdout or "") + (p.stderr or "")
      if p.returncode != 0:
        error = f"exit status {p.returncode}"
    except subprocess.TimeoutExpired as e:
      out = e.stdout or b""
      err = e.stderr or b""
      output = (out.decode(errors="replace") if isinstance(out, bytes) else out) + (
        err.decode(errors="replace") if isinstance(err, bytes) else err
      )
      error = f"timed out after {self.timeout:g} s"
    except OSError as e:
      error = f"could not start ({e})"
    (job["dir"] / "log.txt").write_text(output)
    images: dict[int, np.ndarray] = {}
    bad: list[str] = []
    if error is None:
      outdir = Path(job["values"]["output"])
      size = tuple(self.dataset.image_size)
      for i, e in zip(frames, job["entries"]):
        p = outdir / e["file"]
        if not p.is_file():
          bad.append(f"{e['file']} (missing)")
          continue
        try:
          images[i] = read_edited_image(p, size, self.dataset.background, "--edit-command output")
        except InputError as ex:
          bad.append(f"{e['file']} ({ex})")
      if bad:
        error = f"no usable image for {len(bad)} of {len(frames)} frames: {'; '.join(bad[:3])}"
    return CommandResult(it, frames, images, error, output, time.perf_counter() - t0)

  def _apply(self, res: CommandResult) -> bool:
    self.calls += 1
    for i, img in res.images.items():
      self.images[i] = img
      self.valid[i] = True
    if res.images:
      self._editor = None
    if res.error is not None:
      names = [frame_file(self.dataset.camera_indices[i], self.dataset.timesteps[i]) for i in res.frames]
      msg = (
        f"--edit-command failed at iteration {res.iteration} ({res.error}) on frames "
        f"{', '.join(names[:4])}{' ...' if len(names) > 4 else ''}; output: {_tail(res.output) or '(none)'}"
      )
      self.failures.append(dict(iteration=res.iteration, error=res.error, frames=names))
      if self.strict:
        raise EditCommandError(msg + " (--strict: stopping)")
      self.log(f"warning: {msg}; keeping the last good edits ({int(self.valid.sum())} frames) and going on")
    return bool(res.images)

  def update(self, it: int, render: Callable[[np.ndarray], np.ndarray]) -> bool:
    """Called before iteration `it`: collects a finished background call, and, when due, renders
    the next batch (render(frames) -> uint8/float [n,H,W,3]) and runs the command (waits, unless
    --edit-async and a first batch is in). Returns whether the table changed."""
    changed = False
    if self._pending is not None and (self._pending.done() or self.due(it)):
      fut, self._pending = self._pending, None
      changed |= self._apply(fut.result())
    if not self.due(it):
      return changed
    frames = self.next_frames()
    job = self._prepare(it, frames, np.asarray(render(frames)))
    if self._pool is not None and self.valid.any():
      self._pending = self._pool.submit(self._execute, job)
      return changed
    return self._apply(self._execute(job)) or changed

  def abort(self) -> None:
    """Stops waiting for a background call (a failed run): its result is dropped."""
    if self._pool is not None:
      if self._pending is not None:
        self._pending.cancel()
        self._pending = None
      self._pool.shutdown(wait=False)

  def close(self) -> None:
    """Waits for a background call (its edits are applied, so a checkpoint sees them) and stops the thread."""
    if self._pending is not None:
      fut, self._pending = self._pending, None
      try:
        self._apply(fut.result())
      finally:
        self._pool.shutdown()
    elif self._pool is not None:
      self._pool.shutdown()

  def summary(self) -> dict:
    return dict(calls=self.calls, failures=self.failures, edited_frames=int(self.valid.sum()))


# ------------------------------------------------------------------------------------------------
# Hooks of the edit loop (EditConfig's "editors and regions" flags)
# ------------------------------------------------------------------------------------------------


def check_flags(cfg) -> None:
  """Value checks of the editors-and-regions flags of an EditConfig (one-line InputError)."""
  _check_numbers(
    cfg,
    {
      "edit_command_batch": "int >= 1",
      "region_ring": "int >= 0",
      "edit_command_timeout": "> 0",
      "lambda_keep region_feather": ">= 0",
    },
  )
  if cfg.editor == "frames" and cfg.edited is None:
    raise InputError("--editor frames needs --edited DIR (edited frames of gaedit export-frames)")
  if cfg.editor != "frames" and (cfg.edited is not None or cfg.frames_manifest is not None):
    raise InputError("--edited / --frames-manifest are read only with --editor frames")
  if cfg.editor == "command":
    if not cfg.edit_command:
      raise InputError("--editor command needs --edit-command 'PROGRAM ... {input} {output}'")
    check_template(cfg.edit_command, cfg.edit_command_shell)
  elif cfg.edit_command:
    raise InputError("--edit-command is run only with --editor command")
  if cfg.region is not None and not [n for n in cfg.region.split(",") if n.strip()]:
    raise InputError(f"--region: expected region names separated by commas, got {cfg.region!r}")


def build_editor(cfg, dataset, out: Path):
  """(editor pytree, CommandEditor or None) of --editor frames / command on the training frames."""
  if cfg.editor == "frames":
    ed, rep = load_frames_editor(cfg.edited, dataset, manifest=cfg.frames_manifest)
    print(
      f"--editor frames: {rep['edited']} edited training views from {cfg.edited} ({rep['missing']} "
      f"frames of the manifest without a file: not edited)"
    )
    return ed, None
  ce = CommandEditor(
    cfg.edit_command,
    dataset,
    Path(out) / "edit_command",
    every=cfg.edit_every,
    batch=cfg.edit_command_batch,
    timeout=cfg.edit_command_timeout,
    strict=cfg.strict,
    asynchronous=cfg.edit_async,
    shell=cfg.edit_command_shell,
    seed=cfg.seed,
  )
  return ce.editor(), ce


def resume_identity(cfg) -> dict:
  """What a checkpoint must share with the run, of the editors-and-regions flags."""
  ed = None
  if cfg.edited is not None:
    man = Path(cfg.frames_manifest or Path(cfg.edited) / MANIFEST)
    ed = file_id(man)
  return {"--edited": ed, "--edit-command": cfg.edit_command, "--region": cfg.region}


__all__ = [
  "check_flags",
  "build_editor",
  "resume_identity",
  "MANIFEST",
  "EditCommandError",
  "frame_file",
  "frame_entries",
  "write_manifest",
  "read_manifest",
  "read_edited_image",
  "load_frames_editor",
  "check_template",
  "command_argv",
  "CommandEditor",
]
