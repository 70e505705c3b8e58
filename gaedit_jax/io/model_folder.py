"""Trained avatars in and out, in one place: our model folders and GaussianAvatars'.

Accepted inputs (`read_avatar`; `avatar.load_trained` adds the FLAME model):

* ours (`gaedit reconstruct` / `gaedit edit`): `cfg.json` + `point_cloud/iteration_N/{point_cloud.ply,
  flame_param.npz}`;
* a GaussianAvatars output folder: `cfg_args` (the text of an argparse `Namespace(...)`, read here
  without evaluating anything) + `point_cloud/iteration_N/{point_cloud.ply, flame_param.npz}`, or
  one `iteration_N` folder / its `point_cloud.ply` (what GA's local viewer opens);
* a GaussianAvatars checkpoint `chkpnt<N>.pth` (`torch.save((gaussians.capture(), N))`), given
  directly or as a folder holding it, read with the torch-free allow-listed reader.

The point_cloud.ply and flame_param.npz of both layouts are the same format (io/ply.py): local
Gaussian parameters in the face frame (position in units of the face scale k, log-scale relative to
k, wxyz rotation after the face rotation), opacity logit, SH channel-major (3DGS), binding_0; FLAME
shape [n_shape], static_offset [1,V,3] and per-timestep fields [T,...] (+ dynamic_offset [T,V,3]).
A GA checkpoint holds no FLAME parameters: they come from the flame_param.npz saved at the same
iteration next to it, else from the dataset's tracking (as GaussianAvatars and GaussianAvatar-Editor
do when they restore a checkpoint). Neither layout of GA records the FLAME model file.

Written layouts: `write_model_folder` (ours) and `write_gaussianavatars_folder` (GA's scripts
render.py and local_viewer.py open it).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from gaedit_jax.errors import InputError
from gaedit_jax.flame import FlameParams
from gaedit_jax.io.ply import load_avatar_ply, load_flame_npz, save_avatar_ply, save_flame_npz
from gaedit_jax.nets import torch_pickle
from gaedit_jax.rig import Avatar

LAYOUT_GAEDIT = "gaedit"
LAYOUT_GA = "gaussianavatars"
LAYOUT_GA_CHECKPOINT = "gaussianavatars-checkpoint"

# GaussianAvatars' ModelParams (arguments/__init__.py) with their defaults, in declaration order:
# GA's render.py builds its dataset arguments from exactly these keys of cfg_args.
GA_MODEL_PARAMS: dict[str, Any] = dict(
  sh_degree=3,
  source_path="",
  target_path="",
  model_path="",
  images="images",
  resolution=-1,
  white_background=False,
  data_device="cuda",
  eval=False,
  bind_to_mesh=False,
  disable_flame_static_offset=False,
  not_finetune_flame_params=False,
  select_camera_id=-1,
)

# Our extra cfg_args key (GA's scripts ignore keys they do not know): the FLAME model file.
GA_FLAME_KEY = "gaedit_flame_model"
# GaussianAvatars' FlameHead: FLAME 2023 with 300 shape / 100 expression components, + teeth.
GA_FLAME_DIMS = dict(n_shape=300, n_expr=100, num_vertices=5143)

_MAX_CFG_ARGS = 1 << 20
FLAME_FLAG = "--flame-model PATH (the FLAME pickle the avatar was trained with; GaussianAvatars: flame2023.pkl)"


# ------------------------------------------------------------------------------------------------
# cfg_args: an argparse Namespace repr, read as data
# ------------------------------------------------------------------------------------------------


def parse_cfg_args(text: str, where: str = "cfg_args") -> dict[str, Any]:
  """`Namespace(key=literal, ...)` -> {key: value}. Only the call of the name `Namespace` with
  keyword arguments whose values are Python literals (strings, numbers, booleans, None, tuples,
  lists, dicts) is accepted; anything else (a call, an attribute, a name inside a value) is
  refused. Nothing is evaluated."""
  if len(text) > _MAX_CFG_ARGS:
    raise InputError(f"{where}: {len(text)} characters, too long for a cfg_args Namespace")
  try:
    tree = ast.parse(text.strip(), mode="eval")
  except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
    raise InputError(f"{where}: not the text of an argparse Namespace(...) ({type(e).__name__})") from None
  call = tree.body
  if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Namespace"):
    raise InputError(f"{where}: expected Namespace(key=value, ...), found a {type(call).__name__} expression")
  if call.args:
    raise InputError(f"{where}: Namespace(...) with positional arguments; expected key=value only")
  out: dict[str, Any] = {}
  for kw in call.keywords:
    if kw.arg is None:
      raise InputError(f"{where}: Namespace(**...) is not read; expected key=value only")
    try:
      out[kw.arg] = ast.literal_eval(kw.value)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
      raise InputError(
        f"{where}: field {kw.arg!r} is not a literal value ({type(kw.value).__name__}); "
        "only strings, numbers, booleans, None, lists and tuples are read"
      ) from None
  return out


def format_cfg_args(fields: dict[str, Any]) -> str:
  """The text `str(argparse.Namespace(**fields))` (GaussianAvatars' cfg_args), for literal values."""
  for k, v in fields.items():
    if not k.isidentifier():
      raise ValueError(f"cfg_args: key {k!r} is not an identifier")
    ast.literal_eval(repr(v))  # only literals, so that parse_cfg_args reads it back
  return "Namespace(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"


def read_cfg_args(path: str | os.PathLike) -> dict[str, Any]:
  path = Path(path)
  if path.stat().st_size > _MAX_CFG_ARGS:
    raise InputError(f"{path}: {path.stat().st_size} bytes, too large for a cfg_args Namespace")
  try:
    text = path.read_text(encoding="utf-8")
  except UnicodeDecodeError:
    raise InputError(f"{path}: not a text file (expected an argparse Namespace(...))") from None
  return parse_cfg_args(text, str(path))


# ------------------------------------------------------------------------------------------------
# Finding the avatar
# ------------------------------------------------------------------------------------------------

_IT_RE = re.compile(r"iteration_(\d+)$")
_CKPT_RE = re.compile(r"chkpnt(\d+)\.pth$")


def recorded_flame_model(src: ModelSource) -> str | None:
  """The FLAME model file a folder records: ours in cfg.json, GaussianAvatars' only in our extra
  cfg_args key (GaussianAvatars itself records none)."""
  return _recorded_cfg(src).get(GA_FLAME_KEY if src.layout != LAYOUT_GAEDIT else "flame_model")


def _iterations(model_dir: Path) -> dict[int, Path]:
  d = model_dir / "point_cloud"
  out = {}
  if d.is_dir():
    for p in d.iterdir():
      m = _IT_RE.match(p.name)
      if m and (p / "point_cloud.ply").is_file():
        out[int(m.group(1))] = p
  return out


def _checkpoints(model_dir: Path) -> dict[int, Path]:
  out = {}
  for p in model_dir.glob("chkpnt*.pth"):
    m = _CKPT_RE.match(p.name)
    if m and p.is_file():
      out[int(m.group(1))] = p
  return out


def latest_iteration(model_dir: str | os.PathLike) -> Path:
  """The point_cloud/iteration_<N> folder of a model folder with the highest N."""
  its = _iterations(Path(model_dir))
  if not its:
    raise InputError(f"{model_dir}: no point_cloud/iteration_*/point_cloud.ply (train first)")
  return its[max(its)]


@dataclasses.dataclass(frozen=True)
class ModelSource:
  """Where an avatar is read from: layout (LAYOUT_*), root (the model folder), path (the iteration
  folder, or the checkpoint file), cfg_file (cfg.json / cfg_args, None if absent)."""

  layout: str
  root: Path
  path: Path
  cfg_file: Path | None


def find_model(path: str | os.PathLike, iteration: int | None = None) -> ModelSource:
  """Recognises the layout of `path` (see the module docstring) and picks the iteration (default:
  the highest; a folder with point clouds is preferred to its checkpoints)."""
  p = Path(path)

  def ga_cfg(root: Path) -> Path | None:
    return root / "cfg_args" if (root / "cfg_args").is_file() else None

  if p.is_file():
    if _CKPT_RE.search(p.name) or p.suffix == ".pth":
      return ModelSource(LAYOUT_GA_CHECKPOINT, p.parent, p, ga_cfg(p.parent))
    if p.name == "point_cloud.ply":
      p = p.parent
    else:
      raise InputError(f"{p}: not an avatar (expected a model folder, a point_cloud.ply or a chkpnt<N>.pth)")
  if not p.is_dir():
    raise InputError(f"{p}: no such avatar folder or checkpoint")
  if (p / "point_cloud.ply").is_file() and (p / "flame_param.npz").is_file() and not (p / "point_cloud").is_dir():
    # one iteration folder (GA's local viewer opens its point_cloud.ply)
    root = p.parent.parent if p.parent.name == "point_cloud" else p
    if (root / "cfg.json").is_file():
      return ModelSource(LAYOUT_GAEDIT, root, p, root / "cfg.json")
    return ModelSource(LAYOUT_GA, root, p, ga_cfg(root))
  its, ckpts = _iterations(p), _checkpoints(p)
  if (p / "cfg.json").is_file():
    return ModelSource(LAYOUT_GAEDIT, p, _pick(p, its, iteration, "point_cloud/iteration_{}"), p / "cfg.json")
  if its and (iteration is None or iteration in its or iteration not in ckpts):
    return ModelSource(LAYOUT_GA, p, _pick(p, its, iteration, "point_cloud/iteration_{}"), ga_cfg(p))
  if ckpts:
    return ModelSource(LAYOUT_GA_CHECKPOINT, p, _pick(p, ckpts, iteration, "chkpnt{}.pth"), ga_cfg(p))
  raise InputError(
    f"{p}: not an avatar folder: expected cfg.json + point_cloud/iteration_N/ (gaedit), "
    "cfg_args + point_cloud/iteration_N/ (GaussianAvatars) or chkpnt<N>.pth"
  )


def _pick(root: Path, found: dict[int, Path], iteration: int | None, pattern: str) -> Path:
  if not found:
    raise InputError(f"{root}: no point_cloud/iteration_*/point_cloud.ply (train first)")
  if iteration is None:
    return found[max(found)]
  if iteration not in found:
    raise InputError(f"{root}: no {pattern.format(iteration)} for --iteration {iteration} (found: {sorted(found)})")
  return found[iteration]


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class AvatarFolder:
  """An avatar as read (no FLAME model needed): the Gaussians, FLAME parameters (FlameParams with
  [T,...] per-timestep fields; None for a checkpoint without flame_param.npz and without data),
  cfg (our cfg.json layout: config {image_scale, white_background, sh_degree, ...}, data,
  flame_model (None if unknown), layout, source), it_dir (the iteration folder; for a checkpoint,
  where GaussianAvatars saves that iteration) and iteration."""

  avatar: Avatar
  flame: FlameParams | None
  cfg: dict
  it_dir: Path
  iteration: int | None
  source: ModelSource


def _recorded_cfg(src: ModelSource) -> dict:
  """cfg.json (ours) or cfg_args (GA; {} when absent) as a dict."""
  if src.cfg_file is None:
    return {}
  if src.layout != LAYOUT_GAEDIT:
    return read_cfg_args(src.cfg_file)
  try:
    cfg = json.loads(src.cfg_file.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(f"{src.cfg_file}: not valid JSON ({e})") from None
  if not isinstance(cfg, dict):
    raise InputError(f"{src.cfg_file}: expected a JSON object")
  return dict(cfg)


def _flame_npz(path: Path) -> FlameParams:
  """flame_param.npz (both layouts). GA's dynamic_offset [T,V,3] is zero (GA never optimises it);
  a non-zero one cannot be rendered here and is refused."""
  if not path.is_file():
    raise InputError(
      f"{path}: missing (the FLAME parameters saved next to point_cloud.ply of an avatar bound to FLAME)"
    )
  try:
    with np.load(path, allow_pickle=False) as z:
      d = z["dynamic_offset"] if "dynamic_offset" in z.files else None
  except (ValueError, OSError, zipfile.BadZipFile) as e:
    raise InputError(f"{path}: not a readable npz ({type(e).__name__}: {e})") from None
  if d is not None and d.size and np.any(d != 0):
    raise InputError(f"{path}: 'dynamic_offset' is non-zero; per-timestep vertex offsets are not supported")
  try:
    return load_flame_npz(path)
  except InputError:
    raise
  except ValueError as e:
    raise InputError(str(e)) from None


def _ga_config(args: dict, where: Path) -> dict:
  """Our `config` fields from GA's cfg_args."""
  if args.get("bind_to_mesh") is False:
    raise InputError(f"{where}: bind_to_mesh=False: a static 3DGS scene, not an avatar bound to FLAME")
  res = args.get("resolution", -1)
  if res in (1, 2, 4, 8):
    scale = 1.0 / res
  else:
    scale = 1.0
    if res not in (-1, None):
      warnings.warn(f"{where}: resolution={res!r} (a target width) is read as image_scale 1.0", stacklevel=3)
  # without cfg_args (a lone checkpoint): white, as GaussianAvatars' documented commands train
  wb = bool(args.get("white_background", GA_MODEL_PARAMS["white_background"])) if args else True
  return dict(image_scale=scale, white_background=wb, sh_degree=int(args.get("sh_degree", 3)))


def _image_scale_to_resolution(scale: float) -> int:
  r = 1.0 / float(scale)
  for k in (1, 2, 4, 8):
    if abs(r - k) < 1e-6:
      return -1 if k == 1 else k
  warnings.warn(f"image_scale {scale} has no GaussianAvatars --resolution (1, 2, 4, 8); writing -1", stacklevel=3)
  return -1


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
  """A GaussianAvatars `chkpnt<N>.pth` -> {iteration, active_sh_degree, xyz, features_dc,
  features_rest, scaling, rotation, opacity, binding, binding_counter, spatial_lr_scale,
  optimizer}: numpy arrays (read without torch; nothing in the file is executed). Accepts the capture
  tuples of GA (14 fields), of GA before binding_counter (13) and of GaussianAvatar-Editor (16)."""
  path = Path(path)
  obj = torch_pickle.load(path)  # safe: the allow-listed reader
  if not (
    isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], tuple) and isinstance(obj[1], (int, np.integer))
  ):
    raise InputError(f"{path}: expected (capture_tuple, iteration) as GaussianAvatars' train.py saves it")
  cap, it = obj
  n = len(cap)
  if n == 12:
    raise InputError(
      f"{path}: a 3D Gaussian Splatting checkpoint (12 fields, no binding); "
      "expected GaussianAvatars' (Gaussians bound to FLAME triangles)"
    )
  if n not in (13, 14, 16):
    raise InputError(
      f"{path}: capture tuple of {n} fields; expected 13, 14 (GaussianAvatars) or 16 (GaussianAvatar-Editor)"
    )
  names = ["active_sh_degree", "xyz", "features_dc", "features_rest", "scaling", "rotation", "opacity", "binding"]
  names += (["binding_counter"] if n != 13 else []) + [
    "max_radii2D",
    "xyz_gradient_accum",
    "denom",
    "optimizer",
    "spatial_lr_scale",
  ]
  d = dict(zip(names, cap))
  d["iteration"] = int(it)
  if n == 13:
    d["binding_counter"] = None
  n_g = None
  expect = dict(
    xyz=(3,), features_dc=(1, 3), features_rest=(None, 3), scaling=(3,), rotation=(4,), opacity=(1,), binding=()
  )
  for k, tail in expect.items():
    a = d[k]
    if not isinstance(a, np.ndarray):
      raise InputError(f"{path}: capture field {k!r} is {type(a).__name__}, expected a tensor")
    if k == "opacity" and a.ndim == 1:
      a = d[k] = a[:, None]
    want = "[" + ",".join(["N"] + ["*" if t is None else str(t) for t in tail]) + "]"
    if (
      a.ndim != 1 + len(tail)
      or (n_g is not None and a.shape[0] != n_g)
      or any(t is not None and t != s for t, s in zip(tail, a.shape[1:]))
    ):
      raise InputError(
        f"{path}: capture field {k!r} has shape {list(a.shape)}, expected {want}"
        + (f" with N = {n_g}" if n_g is not None else "")
      )
    n_g = a.shape[0]
    if k != "binding" and (a.dtype.kind != "f" or not np.isfinite(a).all()):
      raise InputError(f"{path}: capture field {k!r} must hold finite floats (dtype {a.dtype})")
  if not np.issubdtype(d["binding"].dtype, np.integer) or (n_g and d["binding"].min() < 0):
    raise InputError(f"{path}: capture field 'binding' must hold face ids >= 0")
  k = d["features_rest"].shape[1] + 1
  if round(np.sqrt(k)) ** 2 != k:
    raise InputError(f"{path}: features_rest has {k - 1} coefficients, expected (d+1)^2-1")
  return d


def _checkpoint_avatar(d: dict) -> Avatar:
  n = d["xyz"].shape[0]
  f32 = lambda a: jnp.asarray(np.asarray(a, np.float32))
  return Avatar(
    xyz=f32(d["xyz"]),
    log_scale=f32(d["scaling"]),
    rotation=f32(d["rotation"]),
    opacity_logit=f32(d["opacity"][:, 0]),
    sh_dc=f32(d["features_dc"]),
    sh_rest=f32(d["features_rest"]),
    binding=jnp.asarray(d["binding"].astype(np.int32)),
    active=jnp.ones(n, bool),
  )


def read_avatar(
  path: str | os.PathLike,
  iteration: int | None = None,
  *,
  data: str | os.PathLike | None = None,
) -> AvatarFolder:
  """Reads an avatar of any accepted layout (module docstring). data: the dataset folder,
  overriding the recorded one (cfg.json data / cfg_args source_path). A checkpoint without a
  flame_param.npz of its iteration has `flame` None: its FLAME parameters are the dataset's
  tracking, which `avatar.load_trained` reads."""
  src = find_model(path, iteration)
  data = None if data is None else Path(data).absolute()
  if src.layout == LAYOUT_GAEDIT:
    cfg = _recorded_cfg(src)
    cfg.setdefault("config", {})
    cfg.setdefault("flame_model", None)
    if data is not None:
      cfg["data"] = str(data)
    cfg.update(layout=src.layout, source=str(src.root))
    return AvatarFolder(
      _ply(src.path / "point_cloud.ply"), _flame_npz(src.path / "flame_param.npz"), cfg, src.path, _it(src.path), src
    )

  args = _recorded_cfg(src)
  config = _ga_config(args, src.cfg_file or src.path)
  recorded = args.get("source_path") or None
  cfg = dict(
    config=config,
    data=str(data) if data is not None else recorded,
    flame_model=args.get(GA_FLAME_KEY),
    layout=src.layout,
    source=str(src.path if src.layout == LAYOUT_GA_CHECKPOINT else src.root),
    gaussianavatars=args,
  )
  if src.layout == LAYOUT_GA:
    avatar = _ply(src.path / "point_cloud.ply")
    config["sh_degree"] = avatar.sh_degree
    return AvatarFolder(avatar, _flame_npz(src.path / "flame_param.npz"), cfg, src.path, _it(src.path), src)

  ck = read_checkpoint(src.path)
  it = ck["iteration"]
  avatar = _checkpoint_avatar(ck)
  config.update(
    sh_degree=avatar.sh_degree,
    active_sh_degree=int(ck["active_sh_degree"]),
    spatial_lr_scale=float(ck["spatial_lr_scale"]),
  )
  it_dir = src.root / "point_cloud" / f"iteration_{it}"
  npz = it_dir / "flame_param.npz"
  flame = None  # a checkpoint alone: the FLAME parameters are the dataset's tracking (avatar.load_trained)
  if npz.is_file():
    flame, cfg["flame_source"] = _flame_npz(npz), str(npz)
  return AvatarFolder(avatar, flame, cfg, it_dir, it, src)


def _ply(path: Path) -> Avatar:
  try:
    return load_avatar_ply(path)
  except InputError:
    raise
  except ValueError as e:
    raise InputError(str(e)) from None


def _it(it_dir: Path) -> int | None:
  m = _IT_RE.match(it_dir.name)
  return int(m.group(1)) if m else None


# ------------------------------------------------------------------------------------------------
# Loading for rendering / editing
# ------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def write_iteration(
  it_dir: str | os.PathLike, avatar: Avatar, flame: FlameParams, *, sh_degree: int | None = None
) -> Path:
  """point_cloud.ply + flame_param.npz of one iteration (the same files in both layouts)."""
  it_dir = Path(it_dir)
  it_dir.mkdir(parents=True, exist_ok=True)
  save_avatar_ply(it_dir / "point_cloud.ply", avatar, sh_degree=sh_degree)
  save_flame_npz(it_dir / "flame_param.npz", flame, flame.motion)
  return it_dir


def write_model_folder(
  out: str | os.PathLike,
  avatar: Avatar,
  flame: FlameParams,
  *,
  iteration: int,
  data: str | os.PathLike,
  flame_model: str | os.PathLike,
  config: dict | None = None,
  sh_degree: int | None = None,
  **extra,
) -> Path:
  """Our model folder: cfg.json (config, data, flame_model, extra keys) + point_cloud/iteration_N."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  it_dir = write_iteration(out / "point_cloud" / f"iteration_{int(iteration)}", avatar, flame, sh_degree=sh_degree)
  (out / "cfg.json").write_text(
    json.dumps(
      dict(
        config=dict(config or {}),
        data=str(Path(data).absolute()),
        flame_model=str(Path(flame_model).absolute()),
        **extra,
      ),
      indent=2,
    )
  )
  return it_dir


def gaussianavatars_cfg_args(
  *,
  source_path: str | os.PathLike,
  model_path: str | os.PathLike,
  sh_degree: int,
  white_background: bool,
  image_scale: float = 1.0,
  flame_model: str | os.PathLike | None = None,
) -> dict[str, Any]:
  """cfg_args fields for GaussianAvatars' render.py: every ModelParams key (render.py reads them
  all), bind_to_mesh and eval on (train/val/test splits), plus our FLAME model key."""
  a = dict(GA_MODEL_PARAMS)
  a.update(
    sh_degree=int(sh_degree),
    source_path=str(Path(source_path).absolute()),
    model_path=str(Path(model_path).absolute()),
    resolution=_image_scale_to_resolution(image_scale),
    white_background=bool(white_background),
    eval=True,
    bind_to_mesh=True,
  )
  if flame_model is not None:
    a[GA_FLAME_KEY] = str(Path(flame_model).absolute())
  return a


def write_gaussianavatars_folder(
  out: str | os.PathLike,
  avatar: Avatar,
  flame: FlameParams,
  *,
  iteration: int,
  source_path: str | os.PathLike,
  white_background: bool,
  image_scale: float = 1.0,
  sh_degree: int | None = None,
  flame_model: str | os.PathLike | None = None,
  overwrite: bool = False,
) -> Path:
  """A GaussianAvatars output folder: cfg_args + point_cloud/iteration_N/{point_cloud.ply,
  flame_param.npz}. GA's render.py (`-m OUT`, reads the dataset at source_path) and local_viewer.py
  (`--point_path OUT/point_cloud/iteration_N/point_cloud.ply --sh_degree D`) open it; their FLAME
  is FLAME 2023 with teeth (300 shape / 100 expression components, 5143 vertices)."""
  out = Path(out)
  it_dir = out / "point_cloud" / f"iteration_{int(iteration)}"
  if (it_dir / "point_cloud.ply").exists() and not overwrite:
    raise InputError(f"{it_dir / 'point_cloud.ply'} exists; pass --overwrite to replace it")
  deg = avatar.sh_degree if sh_degree is None else int(sh_degree)
  ns, ne, nv = flame.shape.shape[-1], flame.expr.shape[-1], flame.static_offset.shape[-2]
  if (ns, ne, nv) != tuple(GA_FLAME_DIMS.values()):
    warnings.warn(
      f"{out}: the FLAME parameters have {ns} shape / {ne} expression components and {nv} vertices; "
      "GaussianAvatars' scripts need FLAME 2023 with teeth (300 / 100 / 5143)",
      stacklevel=2,
    )
  write_iteration(it_dir, avatar, flame, sh_degree=deg)
  args = gaussianavatars_cfg_args(
    source_path=source_path,
    model_path=out,
    sh_degree=deg,
    white_background=white_background,
    image_scale=image_scale,
    flame_model=flame_model,
  )
  (out / "cfg_args").write_text(format_cfg_args(args))
  return it_dir


__all__ = [
  "AvatarFolder",
  "GA_MODEL_PARAMS",
  "ModelSource",
  "FLAME_FLAG",
  "find_model",
  "recorded_flame_model",
  "format_cfg_args",
  "gaussianavatars_cfg_args",
  "latest_iteration",
  "parse_cfg_args",
  "read_avatar",
  "read_cfg_args",
  "read_checkpoint",
  "write_gaussianavatars_folder",
  "write_iteration",
  "write_model_folder",
]
