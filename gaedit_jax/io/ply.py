"""Gaussian `.ply` files (binary little-endian) and `flame_param.npz` (SPEC 2.9).

* `save_avatar_ply`: GaussianAvatars' point_cloud.ply: x,y,z (local), nx,ny,nz (0), f_dc_0..2,
  f_rest_0..(3(K-1)-1) (channel-major as 3DGS: all coefficients of R, then G, then B), opacity
  (logit), scale_0..2 (local log), rot_0..3 (wxyz, unnormalised), binding_0 (face id as float32).
  Only active slots are written.
* `save_world_ply`: the same layout without binding, baked to world space for one posed mesh, so
  generic 3DGS viewers (SuperSplat, ...) open it.
* `save_flame_npz` / `load_flame_npz`: the fine-tuned FLAME parameters (GA layout).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from gaedit_jax.rig import Avatar, FaceFrames, quat_multiply


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


def read_ply(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a binary little-endian ply with one `vertex` element of float/double/int properties."""
  types = {"float": "<f4", "float32": "<f4", "double": "<f8", "int": "<i4", "int32": "<i4",
           "uchar": "u1", "uint8": "u1", "uint": "<u4", "short": "<i2", "ushort": "<u2"}
  with open(path, "rb") as f:
    if f.readline().strip() != b"ply":
      raise ValueError(f"{path}: not a ply file")
    props, n, fmt = [], None, None
    while True:
      line = f.readline()
      if not line:
        raise ValueError(f"{path}: truncated header")
      w = line.decode("ascii").split()
      if not w:
        continue
      if w[0] == "format":
        fmt = w[1]
      elif w[0] == "element":
        if w[1] != "vertex":
          raise ValueError(f"{path}: unsupported element {w[1]}")
        n = int(w[2])
      elif w[0] == "property":
        props.append((w[2], types[w[1]]))
      elif w[0] == "end_header":
        break
    if fmt != "binary_little_endian":
      raise ValueError(f"{path}: only binary_little_endian ply is supported (got {fmt})")
    data = np.frombuffer(f.read(), np.dtype(props), count=n)
  return {k: np.asarray(data[k]) for k, _ in props}


def _gauss_cols(xyz, log_scale, rot, opacity_logit, sh_dc, sh_rest) -> dict[str, np.ndarray]:
  n = xyz.shape[0]
  cols = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
          "nx": np.zeros(n), "ny": np.zeros(n), "nz": np.zeros(n)}
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
  a = {k: np.asarray(getattr(avatar, k)) for k in ("xyz", "log_scale", "rotation", "opacity_logit",
                                                   "sh_dc", "sh_rest", "binding", "active")}
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


def load_avatar_ply(path: str | os.PathLike, *, capacity: int | None = None) -> Avatar:
  """Reads a GaussianAvatars point_cloud.ply into an Avatar (all slots active unless capacity
  is larger than the number of Gaussians)."""
  d = read_ply(path)
  for k in ("x", "y", "z", "opacity", "scale_0", "rot_0", "f_dc_0", "binding_0"):
    if k not in d:
      raise ValueError(f"{path}: missing property {k!r} (not a GaussianAvatars point_cloud.ply?)")
  n = d["x"].shape[0]
  nrest = len([k for k in d if k.startswith("f_rest_")])
  if nrest % 3:
    raise ValueError(f"{path}: {nrest} f_rest properties is not a multiple of 3")
  k = nrest // 3
  rest = np.stack([d[f"f_rest_{i}"] for i in range(nrest)], 1).reshape(n, 3, k).transpose(0, 2, 1) if k else \
      np.zeros((n, 0, 3), np.float32)
  av = Avatar(xyz=np.stack([d["x"], d["y"], d["z"]], 1),
              log_scale=np.stack([d[f"scale_{i}"] for i in range(3)], 1),
              rotation=np.stack([d[f"rot_{i}"] for i in range(4)], 1),
              opacity_logit=d["opacity"], sh_dc=np.stack([d[f"f_dc_{i}"] for i in range(3)], 1)[:, None, :],
              sh_rest=rest, binding=np.rint(d["binding_0"]).astype(np.int32), active=np.ones(n, bool))
  av = Avatar(**{f: jnp.asarray(np.asarray(getattr(av, f), np.float32 if f not in ("binding", "active")
                                           else getattr(av, f).dtype)) for f in av.__dataclass_fields__})
  if capacity is not None and capacity > n:
    from gaedit_jax.rig import with_capacity

    av = with_capacity(av, capacity)
  return av


def save_world_ply(path: str | os.PathLike, avatar: Avatar, frames: FaceFrames, *,
                   sh_degree: int | None = None) -> Path:
  """World-space 3DGS ply (standard INRIA layout, no binding) for one posed mesh (frames
  unbatched: center [F,3], rotation [F,3,3], quat [F,4], scale [F]). Rotating the SH with the
  face frame is not done (as GA's viewer): view-dependent colour is in the local frame."""
  a = _np_avatar(avatar, sh_degree)
  b = a["binding"]
  rot = np.asarray(frames.rotation)[b]
  k = np.asarray(frames.scale)[b][:, None]
  xyz = k * np.einsum("nab,nb->na", rot, a["xyz"]) + np.asarray(frames.center)[b]
  log_s = a["log_scale"] + np.log(k)
  qf = np.asarray(frames.quat)[b]
  ql = a["rotation"] / np.maximum(np.linalg.norm(a["rotation"], axis=-1, keepdims=True), 1e-12)
  q = np.asarray(quat_multiply(jnp.asarray(qf), jnp.asarray(ql)))
  _write_ply(Path(path), _gauss_cols(xyz, log_s, q, a["opacity_logit"], a["sh_dc"], a["sh_rest"]))
  return Path(path)


def save_flame_npz(path: str | os.PathLike, flame0, per_timestep: dict) -> Path:
  """flame_param.npz (SPEC 2.9): shape, static_offset[1,V,3] from flame0 (FlameParams), the
  fine-tuned per-timestep fields [T,...], dynamic_offset zeros [T,V,3]."""
  f = lambda x: np.asarray(x, np.float32)
  d = {k: f(v) for k, v in per_timestep.items()}
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
  from gaedit_jax.flame import FlameParams

  with np.load(path) as z:
    d = {k: z[k] for k in z.files}
  missing = [k for k in FlameParams.PER_TIMESTEP + ("shape", "static_offset") if k not in d]
  if missing:
    raise ValueError(f"{path}: missing keys {missing}")
  so = d["static_offset"]
  return FlameParams(shape=jnp.asarray(d["shape"].reshape(-1)), static_offset=jnp.asarray(so.reshape(so.shape[-2:])),
                     **{k: jnp.asarray(d[k]) for k in FlameParams.PER_TIMESTEP})


__all__ = ["save_avatar_ply", "load_avatar_ply", "save_world_ply", "read_ply", "save_flame_npz",
           "load_flame_npz"]
