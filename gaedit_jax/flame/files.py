"""FLAME model files: `load_flame` / `save_flame`.

The official pickle layout (FLAME 2020/2023: chumpy arrays read without chumpy through inert
stand-ins of `gaedit_jax.safe_pickle`, scipy-sparse J_regressor, python-2 pickle) with its
`FLAME_masks.pkl` regions, or our own `.npz`. Files are data: nothing in them can run code.
"""

from __future__ import annotations

import copyreg
import dataclasses
import io
import os
import pickle
from pathlib import Path
from typing import Any, Iterable

import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from gaedit_jax import safe_pickle
from gaedit_jax.flame.model import FlameFileError, FlameModel, _regions_dict, with_regions
from gaedit_jax.flame.regions import complete_flame_regions
from gaedit_jax.safe_pickle import StandIn


class _ChumpyStandIn(StandIn):
  """Stands in for chumpy's `Ch` while unpickling: keeps the pickled state (a dict whose 'x'
  holds the numpy value of a terminal `Ch`)."""

  _pickled_class = "chumpy.?"


class _SparseStandIn(StandIn):
  """Stands in for scipy.sparse matrices of any scipy version (old pickles name scipy.sparse.csc)."""

  _pickled_class = "scipy.sparse.?"


def _standin(base: type, module: str, name: str) -> type:
  return safe_pickle.standin(base, module, name)


# What a FLAME model or masks pickle may name: numpy arrays and scalars, python-2 era builtins,
# terminal chumpy arrays and scipy sparse matrices (as inert stand-ins; neither package is imported).
_FLAME_STANDINS = {
  **{(m, "Ch"): _standin(_ChumpyStandIn, m, "Ch") for m in ("chumpy.ch", "chumpy")},
  **{
    (m, n): _standin(_SparseStandIn, m, n)
    for fmt in ("csc", "csr", "coo")
    for n in (f"{fmt}_matrix", f"{fmt}_array")
    for m in ("scipy.sparse", f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}")
  },
}
_FLAME_ALLOWED = {
  **safe_pickle.NUMPY_DATA,
  **safe_pickle.BUILTIN_DATA,
  **_FLAME_STANDINS,
  **safe_pickle.reconstructor_entries(_FLAME_STANDINS.values()),
}
_FLAME_WHY = "only FLAME arrays are read (numpy arrays, chumpy Ch values, scipy sparse matrices)"


def _to_numpy(obj: Any, where: str) -> Any:
  """Converts stand-ins (chumpy / sparse) to dense numpy arrays; other values unchanged."""
  if isinstance(obj, _ChumpyStandIn):
    st = getattr(obj, "_state", None)
    if not isinstance(st, dict) or "x" not in st:
      raise FlameFileError(
        f"{where}: a {obj._pickled_class} object without a stored value 'x' "
        "(only terminal chumpy arrays can be read without chumpy)"
      )
    return _numeric(st["x"], where)
  if isinstance(obj, _SparseStandIn):
    st = getattr(obj, "_state", {})
    if isinstance(st, tuple) and len(st) == 2 and isinstance(st[0], dict):
      st = st[0]
    if not isinstance(st, dict):
      raise FlameFileError(f"{where}: a {obj._pickled_class} without its fields")
    kind = obj._pickled_class.rsplit(".", 1)[-1][:3]
    try:
      shape = tuple(int(s) for s in st.get("_shape", st.get("shape", ())))
      f = {
        k: _numeric(st[k], f"{where}.{k}")
        for k in (("data", "row", "col") if kind == "coo" else ("data", "indices", "indptr"))
      }
      if kind == "coo":
        m = sp.coo_matrix((f["data"], (f["row"], f["col"])), shape=shape)
      else:
        m = (sp.csc_matrix if kind == "csc" else sp.csr_matrix)((f["data"], f["indices"], f["indptr"]), shape=shape)
    except KeyError as e:
      raise FlameFileError(f"{where}: sparse matrix without field {e}") from None
    except (TypeError, ValueError) as e:
      raise FlameFileError(f"{where}: not a valid sparse matrix ({e})") from None
    return np.asarray(m.toarray())
  return obj


def _numeric(value: Any, where: str) -> np.ndarray:
  """`value` as a numeric numpy array, or a FlameFileError naming where it was found."""
  try:
    arr = np.asarray(value)
  except ValueError:  # ragged nested lists
    arr = np.asarray(None)
  if arr.dtype.kind not in "biuf":
    raise FlameFileError(f"{where}: expected a numeric array, found {type(value).__name__}")
  return arr


def _read_pickle(path: Path) -> Any:
  """A FLAME model or masks pickle (python-2 era files included), read as data only."""
  try:
    return safe_pickle.load_path(
      path, allowed=_FLAME_ALLOWED, why=_FLAME_WHY, error=FlameFileError, encoding="latin1", what="FLAME pickle"
    )
  except FileNotFoundError:
    raise FileNotFoundError(f"FLAME file not found: {path}") from None


def _expect(path, key, arr, shape, what=""):
  """Raises FlameFileError naming file, key and expected shape (None = any size)."""
  try:
    arr = np.asarray(arr)
  except ValueError:  # ragged nested lists
    arr = np.asarray(None)
  if arr.dtype.kind not in "biuf":
    raise FlameFileError(f"{path}: key {key!r} is not a numeric array (found {arr.dtype})")
  ok = arr.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, arr.shape))
  if not ok:
    exp = "[" + ",".join("*" if s is None else str(s) for s in shape) + "]"
    got = "[" + ",".join(str(s) for s in arr.shape) + "]"
    raise FlameFileError(f"{path}: key {key!r} has shape {got}, expected {exp}{what}")
  return arr


def _read_masks(path: Path, nv: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """FLAME_masks.pkl: dict region -> vertex ids. Returns (bool masks, ordered id arrays)."""
  data = _read_pickle(path)
  if not isinstance(data, dict):
    raise FlameFileError(f"{path}: expected a dict of region name -> vertex ids, got {type(data)}")
  masks, ordered = {}, {}
  for k, v in data.items():
    k = k.decode() if isinstance(k, bytes) else str(k)
    ids = _numeric(_to_numpy(v, f"{path}:{k}"), f"{path}:{k}").astype(np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= nv):
      raise FlameFileError(f"{path}: region {k!r} has vertex ids outside [0,{nv})")
    m = np.zeros(nv, bool)
    m[ids] = True
    masks[k] = m
    ordered[k] = ids
  return masks, ordered


def _default_masks_path(path: Path) -> Path | None:
  for cand in (
    path.with_name(path.stem + "_masks.pkl"),
    path.with_name("FLAME_masks.pkl"),
    path.parent / "FLAME_masks" / "FLAME_masks.pkl",
  ):
    if cand.exists():
      return cand
  return None


def load_flame(
  path: str | os.PathLike,
  *,
  masks_path: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
  n_shape: int | None = None,
  n_expr: int | None = None,
  dtype=jnp.float32,
) -> FlameModel:
  """Reads a FLAME model: the official pickle (FLAME 2020/2023; chumpy objects and scipy-sparse
  J_regressor read without chumpy) or our `.npz` (`save_flame`).

  Official shapedirs hold 300 shape then 100 expression components (METHOD §2.1); our pickles record
  the split in the extra key `num_shape_components`. `n_shape`/`n_expr` keep the first components
  (None: all). Regions (dicts region -> vertex ids, FLAME_masks.pkl format) come from `masks_path`
  (one file or several, merged in order), else from a sibling `<stem>_masks.pkl`,
  `FLAME_masks.pkl` or `FLAME_masks/FLAME_masks.pkl` if present; ordered `lip_outside_ring_upper`/
  `lip_outside_ring_lower` entries there become the lip rings used by `add_teeth`. A 5023-vertex
  (FLAME topology) model gets GaussianAvatars' own regions (lips_tight, lip_inside, lip rings, ...)
  where its masks lack them (`complete_flame_regions`); other topologies must bring the regions
  they need in a masks file.
  """
  path = Path(path)
  if path.suffix == ".npz":
    model = _load_npz(path, dtype)
  else:
    model = _load_pickle(path, masks_path, dtype)
  if n_shape is not None:
    if n_shape > model.n_shape:
      raise FlameFileError(f"{path}: n_shape={n_shape} requested but the file has {model.n_shape}")
    model = dataclasses.replace(model, shapedirs=model.shapedirs[..., :n_shape])
  if n_expr is not None:
    if n_expr > model.n_expr:
      raise FlameFileError(f"{path}: n_expr={n_expr} requested but the file has {model.n_expr}")
    model = dataclasses.replace(model, exprdirs=model.exprdirs[..., :n_expr])
  return complete_flame_regions(model)


def _load_pickle(path: Path, masks_path, dtype) -> FlameModel:
  raw = _read_pickle(path)
  if not isinstance(raw, dict):
    raise FlameFileError(f"{path}: expected a dict at the top level, got {type(raw).__name__}")
  d = {}
  for k, v in raw.items():
    k = k.decode() if isinstance(k, bytes) else k
    d[k] = _to_numpy(v, f"{path}:{k}")
  for key in ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table"):
    if key not in d:
      raise FlameFileError(
        f"{path}: missing key {key!r} (official FLAME layout: v_template, f, "
        "shapedirs, posedirs, J_regressor, weights, kintree_table)"
      )
  vt = _expect(path, "v_template", d["v_template"], (None, 3))
  nv = vt.shape[0]
  faces = _expect(path, "f", d["f"], (None, 3)).astype(np.int64)
  if faces.size and (faces.min() < 0 or faces.max() >= nv):
    raise FlameFileError(f"{path}: key 'f' has vertex ids outside [0,{nv})")
  kt = _expect(path, "kintree_table", d["kintree_table"], (2, None)).astype(np.int64)
  nj = kt.shape[1]
  sd = _expect(path, "shapedirs", d["shapedirs"], (nv, 3, None))
  pd = _expect(path, "posedirs", d["posedirs"], (nv, 3, (nj - 1) * 9))
  jr = _expect(path, "J_regressor", d["J_regressor"], (nj, nv))
  w = _expect(path, "weights", d["weights"], (nv, nj))
  n_total = sd.shape[2]
  n_sh = int(d.get("num_shape_components", min(300, n_total)))
  # kintree_table[0] holds parent ids (the root's is 2^32-1 in the official files).
  parents = tuple(-1 if (p < 0 or p >= nj or i == 0) else int(p) for i, p in enumerate(kt[0]))
  regions, ordered = {}, {}
  if masks_path is None:
    mps = [p for p in [_default_masks_path(path)] if p is not None]
  elif isinstance(masks_path, (str, os.PathLike)):
    mps = [Path(masks_path)]
  else:
    mps = [Path(p) for p in masks_path]
  for mp in mps:  # later files add to / override earlier ones (FLAME_masks.pkl + custom masks)
    r, o = _read_masks(mp, nv)
    regions.update(r)
    ordered.update(o)
  up = ordered.get("lip_outside_ring_upper")
  lo = ordered.get("lip_outside_ring_lower")
  model = FlameModel(
    v_template=jnp.asarray(vt, dtype),
    shapedirs=jnp.asarray(sd[:, :, :n_sh], dtype),
    exprdirs=jnp.asarray(sd[:, :, n_sh:], dtype),
    posedirs=jnp.asarray(pd.reshape(-1, pd.shape[-1]).T, dtype),  # [V*3,P] -> [P,V*3]
    j_regressor=jnp.asarray(jr, dtype),
    lbs_weights=jnp.asarray(w, dtype),
    faces=jnp.asarray(faces, jnp.int32),
    region_masks=jnp.zeros((0, nv), bool),
    lip_ring_upper=None if up is None else jnp.asarray(up, jnp.int32),
    lip_ring_lower=None if lo is None else jnp.asarray(lo, jnp.int32),
    parents=parents,
  )
  return with_regions(model, regions)


_NPZ_KEYS = ("v_template", "shapedirs", "exprdirs", "posedirs", "j_regressor", "lbs_weights", "faces", "parents")


def _load_npz(path: Path, dtype) -> FlameModel:
  try:
    z = np.load(path, allow_pickle=False)
  except FileNotFoundError:
    raise FileNotFoundError(f"FLAME file not found: {path}") from None
  except Exception as e:  # noqa: BLE001 - report any decoding failure with the file name
    raise FlameFileError(f"{path}: not a readable npz ({type(e).__name__}: {e})") from None
  for k in _NPZ_KEYS:
    if k not in z:
      raise FlameFileError(f"{path}: missing key {k!r}")
  vt = _expect(path, "v_template", z["v_template"], (None, 3))
  nv = vt.shape[0]
  parents = tuple(int(p) for p in _expect(path, "parents", z["parents"], (None,)))
  nj = len(parents)
  sd = _expect(path, "shapedirs", z["shapedirs"], (nv, 3, None))
  ed = _expect(path, "exprdirs", z["exprdirs"], (nv, 3, None))
  pd = _expect(path, "posedirs", z["posedirs"], ((nj - 1) * 9, nv * 3))
  jr = _expect(path, "j_regressor", z["j_regressor"], (nj, nv))
  w = _expect(path, "lbs_weights", z["lbs_weights"], (nv, nj))
  faces = _expect(path, "faces", z["faces"], (None, 3))
  names = tuple(str(n) for n in z["region_names"]) if "region_names" in z else ()
  rm = _expect(path, "region_masks", z["region_masks"], (len(names), nv)) if names else np.zeros((0, nv), bool)
  ring = lambda k: jnp.asarray(z[k], jnp.int32) if k in z else None
  return FlameModel(
    v_template=jnp.asarray(vt, dtype),
    shapedirs=jnp.asarray(sd, dtype),
    exprdirs=jnp.asarray(ed, dtype),
    posedirs=jnp.asarray(pd, dtype),
    j_regressor=jnp.asarray(jr, dtype),
    lbs_weights=jnp.asarray(w, dtype),
    faces=jnp.asarray(faces, jnp.int32),
    region_masks=jnp.asarray(rm, bool),
    lip_ring_upper=ring("lip_ring_upper"),
    lip_ring_lower=ring("lip_ring_lower"),
    parents=parents,
    region_names=names,
    has_teeth=bool(z["has_teeth"]) if "has_teeth" in z else False,
  )


class _PickleWriter(pickle._Pickler):  # pure-python pickler: lets us emit python-2 era globals
  """Writes numpy arrays wrapped in `_ChumpyOut` as `chumpy.ch.Ch` objects and `_SparseOut` as a
  legacy `scipy.sparse.csc.csc_matrix`, the way the official (python-2, protocol 2) files store them,
  without chumpy installed."""

  def save_global(self, obj, name=None):
    path = getattr(obj, "_emit_as", None)
    if path is None:
      return super().save_global(obj, name)
    module, qual = path
    self.write(pickle.GLOBAL + f"{module}\n{qual}\n".encode("ascii"))
    self.memoize(obj)

  dispatch = dict(pickle._Pickler.dispatch)
  dispatch[type] = save_global


class _ChumpyOut:
  _emit_as = ("chumpy.ch", "Ch")

  def __init__(self, x):
    self.x = np.asarray(x)

  def __reduce_ex__(self, protocol):
    return (copyreg._reconstructor, (type(self), object, None), {"x": self.x})


class _SparseOut:
  _emit_as = ("scipy.sparse.csc", "csc_matrix")

  def __init__(self, dense):
    m = sp.csc_matrix(np.asarray(dense))
    self.state = {
      "_shape": tuple(int(s) for s in m.shape),
      "data": m.data,
      "indices": m.indices,
      "indptr": m.indptr,
      "maxprint": 50,
    }

  def __reduce_ex__(self, protocol):
    return (copyreg._reconstructor, (type(self), object, None), self.state)


def save_flame(model: FlameModel, path: str | os.PathLike, *, masks_path: str | os.PathLike | None = None) -> Path:
  """Writes `model`. `.npz`: our layout (everything, teeth included). Otherwise the official FLAME
  pickle layout (protocol 2; v_template/shapedirs/weights as chumpy `Ch` objects, J_regressor as a
  scipy-sparse csc matrix, posedirs [V,3,36], kintree_table, f, J, bs_style, bs_type) plus an extra
  `num_shape_components`, and the regions (and ordered lip rings) to `masks_path` (default:
  `<stem>_masks.pkl` next to it). Official-layout files hold the model without teeth, as FLAME does
  (teeth are added at load time by `add_teeth`)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  np_ = lambda a: np.asarray(a)
  if path.suffix == ".npz":
    extra = {}
    if model.lip_ring_upper is not None:
      extra = dict(lip_ring_upper=np_(model.lip_ring_upper), lip_ring_lower=np_(model.lip_ring_lower))
    np.savez(
      path,
      v_template=np_(model.v_template),
      shapedirs=np_(model.shapedirs),
      exprdirs=np_(model.exprdirs),
      posedirs=np_(model.posedirs),
      j_regressor=np_(model.j_regressor),
      lbs_weights=np_(model.lbs_weights),
      faces=np_(model.faces),
      parents=np.asarray(model.parents, np.int64),
      region_names=np.asarray(model.region_names, dtype=str),
      region_masks=np_(model.region_masks),
      has_teeth=np.asarray(model.has_teeth),
      **extra,
    )
    return path
  if model.has_teeth:
    raise ValueError(
      "save_flame: the official layout stores FLAME without teeth; save the model before add_teeth, or use a .npz path"
    )
  nv = model.num_vertices
  npose = model.posedirs.shape[0]
  posedirs = np_(model.posedirs).T.reshape(nv, 3, npose)
  shapedirs = np.concatenate([np_(model.shapedirs), np_(model.exprdirs)], axis=2)
  kintree = np.zeros((2, model.num_joints), np.int64)
  kintree[0] = [p if p >= 0 else 4294967295 for p in model.parents]
  kintree[1] = np.arange(model.num_joints)
  data = {
    "v_template": _ChumpyOut(np_(model.v_template).astype(np.float64)),
    "f": np_(model.faces).astype(np.uint32),
    "shapedirs": _ChumpyOut(shapedirs.astype(np.float64)),
    "posedirs": posedirs.astype(np.float64),
    "J_regressor": _SparseOut(np_(model.j_regressor).astype(np.float64)),
    "weights": _ChumpyOut(np_(model.lbs_weights).astype(np.float64)),
    "kintree_table": kintree,
    "J": (np_(model.j_regressor) @ np_(model.v_template)).astype(np.float64),
    "bs_style": "lbs",
    "bs_type": "lrotmin",
    "num_shape_components": int(model.n_shape),
  }
  buf = io.BytesIO()
  _PickleWriter(buf, protocol=2).dump(data)
  path.write_bytes(buf.getvalue())
  masks = {n: np.flatnonzero(m).astype(np.int64) for n, m in _regions_dict(model).items()}
  if model.lip_ring_upper is not None:
    masks["lip_outside_ring_upper"] = np_(model.lip_ring_upper).astype(np.int64)
    masks["lip_outside_ring_lower"] = np_(model.lip_ring_lower).astype(np.int64)
  mp = Path(masks_path) if masks_path is not None else path.with_name(path.stem + "_masks.pkl")
  buf = io.BytesIO()
  _PickleWriter(buf, protocol=2).dump(masks)
  mp.write_bytes(buf.getvalue())
  return path
