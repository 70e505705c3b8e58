"""Gaussian `.ply` files (binary little-endian) and `flame_param.npz` (METHOD §2.9).

* `save_avatar_ply`: GaussianAvatars' point_cloud.ply: x,y,z (local), nx,ny,nz (0), f_dc_0..2,
  f_rest_0..(3(K-1)-1) (channel-major as 3DGS: all coefficients of R, then G, then B), opacity
  (logit), scale_0..2 (local log), rot_0..3 (wxyz, unnormalised), binding_0 (face id as float32).
  Only active slots are written.
* `save_world_ply`: the same layout without binding, baked to world space for one posed mesh, so
  generic 3DGS viewers (SuperSplat, ...) open it; `save_cloud_ply` / `read_cloud_ply`: any
  world-space GaussianCloud (io/cloud.py) in that layout.
* `save_flame_npz` / `load_flame_npz`: the fine-tuned FLAME parameters (GA layout).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from gaedit_jax.errors import InputError
from gaedit_jax.flame import FlameMotion, FlameParams
from gaedit_jax.io.cloud import GaussianCloud, convert_axes, world_cloud
from gaedit_jax.rig import Avatar, FaceFrames, with_capacity


def _write_ply(path: Path, cols: dict[str, np.ndarray]) -> None:
  n = len(next(iter(cols.values())))
  dt = np.dtype([(k, "<f4") for k in cols])
  arr = np.empty(n, dt)
  for k, v in cols.items():
    arr[k] = v
  header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
  header += [f"property float {k}" for k in cols] + ["end_header"]
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  with open(tmp, "wb") as f:
    f.write(("\n".join(header) + "\n").encode("ascii"))
    f.write(arr.tobytes())
  os.replace(tmp, path)


_PLY_TYPES = {
  "char": "i1",
  "int8": "i1",
  "uchar": "u1",
  "uint8": "u1",
  "short": "<i2",
  "int16": "<i2",
  "ushort": "<u2",
  "uint16": "<u2",
  "int": "<i4",
  "int32": "<i4",
  "uint": "<u4",
  "uint32": "<u4",
  "float": "<f4",
  "float32": "<f4",
  "double": "<f8",
  "float64": "<f8",
}
_MAX_HEADER = 1 << 20
NONFINITE_MODES = ("error", "drop")


def _check_nonfinite_mode(nonfinite: str) -> None:
  if nonfinite not in NONFINITE_MODES:
    raise InputError(f"nonfinite={nonfinite!r}: expected one of {', '.join(NONFINITE_MODES)}")


def _read_header(f, path) -> tuple[int, list[tuple[str, str]]]:
  """Parses a ply header; returns (vertex count, [(property, numpy dtype)]) of its vertex element."""
  if f.readline(16).rstrip(b"\r\n") != b"ply":
    raise InputError(f"{path}: not a ply file (no 'ply' magic line)")
  props: list[tuple[str, str]] = []
  n, fmt, element, read = None, None, None, 0
  while True:
    line = f.readline(_MAX_HEADER)
    read += len(line)
    if not line:
      raise InputError(f"{path}: truncated header (no end_header line)")
    if read >= _MAX_HEADER:
      raise InputError(f"{path}: no end_header within the first {_MAX_HEADER} bytes")
    try:
      w = line.decode("ascii").split()
    except UnicodeDecodeError:
      raise InputError(f"{path}: the header holds non-ASCII bytes (a truncated or damaged file?)") from None
    if not w or w[0] in ("comment", "obj_info"):
      continue
    if w[0] == "end_header":
      break
    if w[0] == "format":
      fmt = w[1] if len(w) > 1 else ""
      if fmt != "binary_little_endian":
        raise InputError(
          f"{path}: ply format {fmt!r} is not supported (only binary_little_endian; "
          "re-export the file as binary little-endian)"
        )
    elif w[0] == "element":
      if len(w) != 3 or not w[2].isdigit():
        raise InputError(
          f"{path}: bad header line {line.decode('ascii').strip()!r} (expected 'element <name> <count>')"
        )
      element = w[1]
      if element == "vertex":
        if n is not None:
          raise InputError(f"{path}: two 'element vertex' lines")
        n = int(w[2])
      elif int(w[2]) != 0:
        raise InputError(
          f"{path}: element {element!r} ({w[2]} entries) is not supported (only one 'vertex' element of Gaussians)"
        )
    elif w[0] == "property":
      if element is None:
        raise InputError(f"{path}: property line before any element line")
      if len(w) >= 2 and w[1] == "list":
        name = w[-1] if len(w) >= 5 else "?"
        if element == "vertex":
          raise InputError(f"{path}: property {name!r} is a list, which is not supported")
        continue
      if len(w) != 3:
        raise InputError(
          f"{path}: bad header line {line.decode('ascii').strip()!r} (expected 'property <type> <name>')"
        )
      if element != "vertex":
        continue  # a property of an empty element (checked above)
      typ, name = w[1], w[2]
      if typ not in _PLY_TYPES:
        raise InputError(
          f"{path}: property {name!r} has unknown type {typ!r} (expected one of {', '.join(sorted(_PLY_TYPES))})"
        )
      if any(name == p for p, _ in props):
        raise InputError(f"{path}: property {name!r} appears twice")
      props.append((name, _PLY_TYPES[typ]))
    else:
      raise InputError(f"{path}: unexpected header line {line.decode('ascii').strip()[:80]!r}")
  if fmt is None:
    raise InputError(f"{path}: the header has no format line")
  if n is None:
    raise InputError(f"{path}: the header has no 'element vertex' line")
  if not props:
    raise InputError(f"{path}: the vertex element has no properties")
  return n, props


def read_ply(path: str | os.PathLike, *, nonfinite: str = "error") -> dict[str, np.ndarray]:
  """Reads a binary little-endian ply with one `vertex` element of scalar properties.

  Every problem is an InputError naming the file (and the property): truncated data, a vertex
  count that disagrees with the data size, unsupported formats / elements / property types, and
  non-finite float values. `nonfinite`: "error" (raise) or "drop" (warn with the count and drop
  those vertices)."""
  _check_nonfinite_mode(nonfinite)
  with open(path, "rb") as f:
    n, props = _read_header(f, path)
    dt = np.dtype(props)
    need = n * dt.itemsize
    have = os.fstat(f.fileno()).st_size - f.tell()
    if have < need:
      k, rem = divmod(have, dt.itemsize)
      cut = next(name for name, _ in props if dt.fields[name][1] + dt.fields[name][0].itemsize > rem)
      raise InputError(
        f"{path}: truncated: the header says {n} vertices ({need} bytes) but the data "
        f"ends after {have} bytes, in vertex {k}, property {cut!r}"
      )
    if have > need:
      raise InputError(
        f"{path}: the header says {n} vertices but {have} bytes of data hold "
        f"{have / dt.itemsize:g} vertices of {dt.itemsize} bytes; the vertex count "
        "disagrees with the data size"
      )
    data = f.read(need)
  if len(data) != need:
    raise InputError(f"{path}: truncated while reading ({len(data)} of {need} bytes)")
  arr = np.frombuffer(data, dt, count=n)
  cols = {k: np.array(arr[k]) for k, _ in props}
  bad = np.zeros(n, bool)
  counts = {}
  for k, v in cols.items():
    if v.dtype.kind == "f":
      nf = ~np.isfinite(v)
      if nf.any():
        counts[k] = int(nf.sum())
        bad |= nf
  if counts:
    what = ", ".join(f"{k!r} ({c})" for k, c in counts.items())
    if nonfinite == "error":
      raise InputError(
        f"{path}: non-finite values (NaN or inf) in property {what}, in {int(bad.sum())} "
        f"of {n} vertices (pass nonfinite='drop' to drop those vertices)"
      )
    warnings.warn(
      f"{path}: dropped {int(bad.sum())} of {n} vertices with non-finite values in property {what}", stacklevel=2
    )
    cols = {k: v[~bad] for k, v in cols.items()}
  return cols


def _gauss_cols(xyz, log_scale, rot, opacity_logit, sh_dc, sh_rest) -> dict[str, np.ndarray]:
  n = xyz.shape[0]
  cols = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "nx": np.zeros(n), "ny": np.zeros(n), "nz": np.zeros(n)}
  for c in range(3):
    cols[f"f_dc_{c}"] = sh_dc[:, 0, c]
  rest = np.transpose(sh_rest, (0, 2, 1)).reshape(n, -1)  # [N, 3*(K-1)] channel-major (3DGS)
  for i in range(rest.shape[1]):
    cols[f"f_rest_{i}"] = rest[:, i]
  cols["opacity"] = opacity_logit
  for i in range(3):
    cols[f"scale_{i}"] = log_scale[:, i]
  for i in range(4):
    cols[f"rot_{i}"] = rot[:, i]
  return cols


def _np_avatar(avatar: Avatar, sh_degree: int | None):
  a = {
    k: np.asarray(getattr(avatar, k))
    for k in ("xyz", "log_scale", "rotation", "opacity_logit", "sh_dc", "sh_rest", "binding", "active")
  }
  m = a.pop("active").astype(bool)
  a = {k: v[m] for k, v in a.items()}
  if sh_degree is not None:
    k = (sh_degree + 1) ** 2 - 1
    r = a["sh_rest"]
    a["sh_rest"] = np.concatenate([r, np.zeros((r.shape[0], max(k - r.shape[1], 0), 3), r.dtype)], 1)[:, :k]
  return a


def save_avatar_ply(path: str | os.PathLike, avatar: Avatar, *, sh_degree: int | None = None) -> Path:
  """GaussianAvatars point_cloud.ply (local parameters + binding_0) of the active Gaussians."""
  a = _np_avatar(avatar, sh_degree)
  cols = _gauss_cols(a["xyz"], a["log_scale"], a["rotation"], a["opacity_logit"], a["sh_dc"], a["sh_rest"])
  cols["binding_0"] = a["binding"].astype(np.float32)
  _write_ply(Path(path), cols)
  return Path(path)


_AVATAR_PROPS = (
  "x",
  "y",
  "z",
  "f_dc_0",
  "f_dc_1",
  "f_dc_2",
  "opacity",
  "scale_0",
  "scale_1",
  "scale_2",
  "rot_0",
  "rot_1",
  "rot_2",
  "rot_3",
  "binding_0",
)


def load_avatar_ply(
  path: str | os.PathLike, *, capacity: int | None = None, num_faces: int | None = None, nonfinite: str = "error"
) -> Avatar:
  """Reads a GaussianAvatars point_cloud.ply into an Avatar (all slots active unless capacity
  is larger than the number of Gaussians).

  Checks what it reads (InputError naming the file and property): every property GaussianAvatars
  writes is present (f_rest_0..f_rest_{3(K-1)-1} without gaps), `binding_0` holds integer face ids
  >= 0, and below `num_faces` when given (the FLAME mesh's face count, teeth included). Non-finite
  values: `nonfinite="error"` raises, `"drop"` warns and drops those Gaussians (see `read_ply`)."""
  d = read_ply(path, nonfinite=nonfinite)
  missing = [k for k in _AVATAR_PROPS if k not in d]
  if missing:
    raise InputError(
      f"{path}: missing property {missing[0]!r}"
      + (f" (and {', '.join(map(repr, missing[1:]))})" if missing[1:] else "")
      + " (not a GaussianAvatars point_cloud.ply?)"
    )
  n = d["x"].shape[0]
  nrest = len([k for k in d if k.startswith("f_rest_")])
  gap = next((i for i in range(nrest) if f"f_rest_{i}" not in d), None)
  if gap is not None:
    raise InputError(
      f"{path}: missing property 'f_rest_{gap}' ({nrest} f_rest properties must be f_rest_0..f_rest_{nrest - 1})"
    )
  if nrest % 3:
    raise InputError(f"{path}: {nrest} f_rest properties is not a multiple of 3")
  b = np.asarray(d["binding_0"], np.float64)
  limit = num_faces if num_faces is not None else 2**31
  wrong = np.flatnonzero((b != np.rint(b)) | (b < 0) | (b >= limit))
  if wrong.size:
    i = int(wrong[0])
    rng = f"[0, {num_faces})" if num_faces is not None else "[0, number of faces)"
    raise InputError(
      f"{path}: property 'binding_0' holds {b[i]:g} at Gaussian {i} ({wrong.size} such): "
      f"face ids must be integers in {rng}"
    )
  k = nrest // 3
  rest = (
    np.stack([d[f"f_rest_{i}"] for i in range(nrest)], 1).reshape(n, 3, k).transpose(0, 2, 1)
    if k
    else np.zeros((n, 0, 3), np.float32)
  )
  av = Avatar(
    xyz=np.stack([d["x"], d["y"], d["z"]], 1),
    log_scale=np.stack([d[f"scale_{i}"] for i in range(3)], 1),
    rotation=np.stack([d[f"rot_{i}"] for i in range(4)], 1),
    opacity_logit=d["opacity"],
    sh_dc=np.stack([d[f"f_dc_{i}"] for i in range(3)], 1)[:, None, :],
    sh_rest=rest,
    binding=b.astype(np.int32),
    active=np.ones(n, bool),
  )
  av = Avatar(
    **{
      f: jnp.asarray(np.asarray(getattr(av, f), np.float32 if f not in ("binding", "active") else getattr(av, f).dtype))
      for f in av.__dataclass_fields__
    }
  )
  if capacity is not None and capacity > n:
    av = with_capacity(av, capacity)
  return av


def save_cloud_ply(path: str | os.PathLike, cloud: GaussianCloud) -> Path:
  """A GaussianCloud as a standard 3DGS point_cloud.ply (INRIA layout, no binding)."""
  _write_ply(
    Path(path),
    _gauss_cols(cloud.xyz, cloud.log_scale, cloud.quat, cloud.opacity_logit, cloud.sh_dc[:, None, :], cloud.sh_rest),
  )
  return Path(path)


def read_cloud_ply(path: str | os.PathLike) -> GaussianCloud:
  """Reads a 3DGS ply (INRIA layout; a binding column, if any, is ignored) into a GaussianCloud
  (quaternions normalised). Missing properties are an InputError naming the file."""
  d = read_ply(path)
  missing = [k for k in _AVATAR_PROPS if k != "binding_0" and k not in d]
  if missing:
    raise InputError(f"{path}: missing property {missing[0]!r} (not a 3D Gaussian splatting ply?)")
  n = d["x"].shape[0]
  nrest = len([k for k in d if k.startswith("f_rest_")])
  if nrest % 3 or any(f"f_rest_{i}" not in d for i in range(nrest)):
    raise InputError(f"{path}: the f_rest properties must be f_rest_0..f_rest_<3k-1>, found {nrest}")
  k = nrest // 3
  rest = (
    np.stack([d[f"f_rest_{i}"] for i in range(nrest)], 1).reshape(n, 3, k).transpose(0, 2, 1)
    if k
    else np.zeros((n, 0, 3))
  )
  q = np.stack([d[f"rot_{i}"] for i in range(4)], 1)
  return GaussianCloud(
    xyz=np.stack([d["x"], d["y"], d["z"]], 1),
    log_scale=np.stack([d[f"scale_{i}"] for i in range(3)], 1),
    quat=q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12),
    opacity_logit=d["opacity"],
    sh_dc=np.stack([d[f"f_dc_{i}"] for i in range(3)], 1),
    sh_rest=rest,
  )


def save_world_ply(
  path: str | os.PathLike, avatar: Avatar, frames: FaceFrames, *, sh_degree: int | None = None, axes: str = "rub"
) -> Path:
  """World-space 3DGS ply (standard INRIA layout, no binding) for one posed mesh (frames
  unbatched: center [F,3], rotation [F,3,3], quat [F,4], scale [F]); io.cloud.world_cloud. axes:
  "rub" our world as is, "rdf" turned for y-down viewers (io.cloud.convert_axes)."""
  return save_cloud_ply(path, convert_axes(world_cloud(avatar, frames, sh_degree=sh_degree), "rub", axes))


def save_flame_npz(path: str | os.PathLike, flame0: FlameParams, motion: FlameMotion) -> Path:
  """flame_param.npz (METHOD §2.9): shape, static_offset[1,V,3] from flame0, the fine-tuned
  per-timestep fields [T,...] of `motion`, dynamic_offset zeros [T,V,3]."""
  f = lambda x: np.asarray(x, np.float32)
  d = {k: f(v) for k, v in motion.items()}
  t = d["rotation"].shape[0]
  so = f(flame0.static_offset)
  d["shape"] = f(flame0.shape)
  d["static_offset"] = so.reshape((1,) + so.shape[-2:])
  d["dynamic_offset"] = np.zeros((t,) + so.shape[-2:], np.float32)
  path = Path(path)
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, **d)
  os.replace(tmp, path)
  return path


def load_flame_npz(path: str | os.PathLike):
  """Reads flame_param.npz -> FlameParams ([T,...] per-timestep fields, shape [n], static_offset [V,3])."""

  try:
    with np.load(path, allow_pickle=False) as z:  # data only: object arrays are refused
      d = {k: z[k] for k in z.files}
  except FileNotFoundError:
    raise
  except Exception as e:  # noqa: BLE001 - any decoding failure: name the file, in one line
    raise InputError(f"{path}: not a readable npz ({type(e).__name__}: {' '.join(str(e).split())})") from None
  missing = [k for k in FlameParams.PER_TIMESTEP + ("shape", "static_offset") if k not in d]
  if missing:
    raise InputError(f"{path}: missing keys {missing}")
  so = d["static_offset"]
  return FlameParams(
    shape=jnp.asarray(d["shape"].reshape(-1)),
    static_offset=jnp.asarray(so.reshape(so.shape[-2:])),
    **{k: jnp.asarray(d[k]) for k in FlameParams.PER_TIMESTEP},
  )


__all__ = [
  "save_avatar_ply",
  "load_avatar_ply",
  "save_world_ply",
  "save_cloud_ply",
  "read_cloud_ply",
  "read_ply",
  "save_flame_npz",
  "load_flame_npz",
]
