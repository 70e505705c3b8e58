"""A multi-view video dataset of the built-in synthetic head (written by `gaedit synth OUT`).

The head (`flame.make_synthetic_flame` + `flame.add_teeth`) is posed by FLAME parameters
that move expression, jaw, neck, eyes (and a little global motion), seen by a NeRSemble-like rig of
16 cameras ~1 m away (camera 8 frontal), and rendered by an independent textured-mesh z-buffer
rasterizer (`mesh_raster`, numpy; not the Gaussian rasterizer) with procedural textures
(`textures`), supersampled for anti-aliasing, on a white background. It is written in the
GaussianAvatars/VHAP layout (`layout.DatasetWriter`), with VHAP's train/val/test split, the FLAME
model file (official pickle layout, `OUT/flame/synthetic_flame.pkl` + `_masks.pkl`), the FLAME
parameters per timestep, and a contact sheet `OUT/contact_sheet.png`.

The same seed with `--texture facepaint` renders the same motion with face paint: the ground truth
for an "Apply face paint" edit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from gaedit_jax.camera import look_at
from gaedit_jax.data import mesh_raster, textures
from gaedit_jax.data.layout import FLAME_FILE, DatasetExistsError, DatasetWriter
from gaedit_jax.errors import InputError
from gaedit_jax.flags import check_flags, config_checks
from gaedit_jax.flame import FlameModel, FlameParams, add_teeth, flame_forward, region_face_mask, save_flame
from gaedit_jax.flame import synthetic as sh

MIN_CAMERAS = 2  # a training camera and the validation camera
MIN_TIMESTEPS = 4  # train / val and a non-empty test split at train_ratio 0.7 (ceil(0.7 T) < T)


@dataclasses.dataclass
class SynthConfig:
  """Options of `gaedit synth` (defaults: small enough for the CPU demo and CI).

  The command needs a grid of at least 2 cameras (a training and the validation camera) and enough
  timesteps that the test split is not empty: ceil(train_ratio x T) < T, i.e. at least 4 timesteps
  at the default --train-ratio 0.7; the head grid needs --rows >= 16 and an even --cols >= 24.
  """

  out: Path
  """Output dataset folder (GaussianAvatars/VHAP layout)."""
  width: int = 128
  """Image width in pixels (NeRSemble's 802x550 is portrait; default keeps that aspect roughly)."""
  height: int = 176
  """Image height in pixels."""
  num_cameras: int = 16
  """Cameras of the rig (camera 8 is the frontal, validation camera when there are more than 8)."""
  num_timesteps: int = 16
  """Timesteps of the sequence (the first ceil(70%) are train/val, the rest test)."""
  seed: int = 0
  """Seed of the motion and the identity (shape); the head model itself is fixed."""
  texture: Literal["skin", "facepaint"] = "skin"
  """Appearance: plain skin, or face paint (same motion; ground truth for a face-paint edit)."""
  supersample: int = 2
  """Supersampling factor per axis (anti-aliasing of edges and of the foreground mask)."""
  train_ratio: float = 0.7
  """Fraction of timesteps in train/val (VHAP: 0.7)."""
  n_shape: int = 20
  """Shape components of the synthetic FLAME model."""
  n_expr: int = 20
  """Expression components of the synthetic FLAME model."""
  rows: int = 40
  """Latitude rows of the head grid (with cols: ~2.6k vertices and ~5.3k faces incl. teeth)."""
  cols: int = 56
  """Longitude columns of the head grid (even)."""
  camera_distance: float = 1.0
  """Distance of the cameras from the head, metres (NeRSemble: ~1 m)."""
  view_height: float = 0.34
  """Height of the world (metres, at the head's distance) the frame spans; sets the focal length."""
  motion_scale: float = 1.0
  """Scales all motion amplitudes (0 = a still head)."""
  overwrite: bool = False
  """Replace an existing dataset in `out`."""
  contact_sheet: bool = True
  """Save contact_sheet.png (cameras x a few timesteps)."""

  def __post_init__(self):
    config_checks(self.validate_flags)

  def validate_flags(self) -> None:
    """Value checks of the flags (one-line InputError naming the flag)."""
    check_flags(
      self,
      {
        "width height num_cameras num_timesteps supersample n_shape n_expr": "int >= 1",
        "seed": "int >= 0",
        "rows": "int >= 16",
        "cols": "int >= 24",
        "train_ratio": "(0, 1]",
        "camera_distance view_height": "> 0",
        "motion_scale": ">= 0",
      },
    )
    if self.cols % 2:
      raise InputError(f"--cols must be even (the head grid is mirror-symmetric), got {self.cols}")

  def check_grid(self) -> None:
    """The smallest dataset the pipeline supports (see the class docstring); errors name the flag."""
    if self.num_cameras < MIN_CAMERAS:
      raise InputError(
        f"--num-cameras must be >= {MIN_CAMERAS} (a training camera and the validation camera), got {self.num_cameras}"
      )
    n_train = math.ceil(self.train_ratio * self.num_timesteps)
    if self.num_timesteps < 2 or n_train >= self.num_timesteps:
      raise InputError(
        f"--num-timesteps {self.num_timesteps} leaves no test timesteps at --train-ratio "
        f"{self.train_ratio} (the first ceil({self.train_ratio} x {self.num_timesteps}) = "
        f"{n_train} are train / val); use at least {MIN_TIMESTEPS} timesteps at 0.7 or a "
        "smaller --train-ratio"
      )


# ------------------------------------------------------------------------------------------------
# Cameras and motion
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RigCamera:
  index: int
  serial: str
  world_to_camera: np.ndarray  # [4,4] OpenCV
  fx: float
  fy: float
  cx: float
  cy: float
  width: int
  height: int


def nersemble_like_rig(
  num_cameras: int = 16,
  width: int = 128,
  height: int = 176,
  *,
  distance: float = 1.0,
  view_height: float = 0.34,
  target=(0.0, -0.025, 0.0),
) -> list[RigCamera]:
  """Cameras on an arc in front of the head (azimuth -72..+63 deg in 9 deg steps for 16 cameras),
  alternating higher and lower rows, all looking at the head; camera 8 (or the middle one when there
  are fewer than 9) is frontal at eye level. Focal length: the frame spans `view_height` metres
  vertically at `distance`."""
  if num_cameras < 1:
    raise ValueError("num_cameras must be >= 1")
  c = 8 if num_cameras > 8 else num_cameras // 2
  span = max(c, num_cameras - 1 - c, 1)
  step = 72.0 / span if num_cameras > 1 else 0.0
  f = height * distance / view_height
  out = []
  for i in range(num_cameras):
    k = i - c
    az = np.deg2rad(k * step)
    el = 0.0 if k == 0 else np.deg2rad(14.0 if k % 2 == 0 else -8.0)
    d = distance * (1.0 + 0.03 * math.sin(1.7 * i + 0.3)) if k else distance
    eye = np.asarray(target) + d * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    out.append(
      RigCamera(
        index=i,
        serial=f"2222000{i:02d}",
        world_to_camera=look_at(eye, target),
        fx=f,
        fy=f,
        cx=width / 2.0,
        cy=height / 2.0,
        width=width,
        height=height,
      )
    )
  return out


def make_motion(model: FlameModel, num_timesteps: int, seed: int = 0, *, scale: float = 1.0) -> FlameParams:
  """A smooth, varied sequence: identity (shape) from the seed; per timestep sums of sinusoids for
  expressions (named ones stronger), jaw opening up to ~0.33 rad (mouth open about half of the
  time), neck yaw/pitch/roll, eye gaze (both eyes together), small global rotation and translation."""
  rng = np.random.default_rng(seed)
  T = int(num_timesteps)
  t = np.arange(T) / max(T, 1)

  def wave(amp, n):
    f = rng.uniform(0.6, 1.8, (n, 2))
    ph = rng.uniform(0, 2 * np.pi, (n, 2))
    w = rng.uniform(0.5, 1.0, (n, 2))
    return (
      amp
      * scale
      * (
        w[None, :, 0] * np.sin(2 * np.pi * f[None, :, 0] * t[:, None] + ph[None, :, 0])
        + 0.5 * w[None, :, 1] * np.sin(2 * np.pi * f[None, :, 1] * t[:, None] + ph[None, :, 1])
      )
    )

  n_expr = model.n_expr
  expr = wave(1.3, n_expr)
  expr[:, 8:] *= 0.35  # the random fields move less than the named ones
  shape = rng.normal(0.0, 0.6, model.n_shape)
  jaw = np.zeros((T, 3))
  jaw[:, 0] = 0.33 * scale * np.clip(np.sin(2 * np.pi * (1.4 * t + rng.uniform())), 0, None) ** 1.5
  jaw[:, 1] = 0.03 * scale * np.sin(2 * np.pi * (0.9 * t + rng.uniform()))
  neck = (
    np.stack(
      [
        0.10 * np.sin(2 * np.pi * (0.7 * t + rng.uniform())),
        0.22 * np.sin(2 * np.pi * (0.5 * t + rng.uniform())),
        0.05 * np.sin(2 * np.pi * (0.9 * t + rng.uniform())),
      ],
      -1,
    )
    * scale
  )
  gaze = (
    np.stack(
      [
        0.15 * np.sin(2 * np.pi * (1.1 * t + rng.uniform())),
        0.30 * np.sin(2 * np.pi * (0.8 * t + rng.uniform())),
        np.zeros(T),
      ],
      -1,
    )
    * scale
  )
  eyes = np.concatenate([gaze, gaze], -1)
  rot = (
    np.stack(
      [
        0.04 * np.sin(2 * np.pi * (0.6 * t + rng.uniform())),
        0.05 * np.sin(2 * np.pi * (0.4 * t + rng.uniform())),
        np.zeros(T),
      ],
      -1,
    )
    * scale
  )
  trans = (
    np.stack(
      [
        0.004 * np.sin(2 * np.pi * (0.5 * t + rng.uniform())),
        0.003 * np.sin(2 * np.pi * (0.7 * t + rng.uniform())),
        0.004 * np.sin(2 * np.pi * (0.3 * t + rng.uniform())),
      ],
      -1,
    )
    * scale
  )
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return FlameParams(
    shape=f32(shape),
    expr=f32(expr),
    rotation=f32(rot),
    neck_pose=f32(neck),
    jaw_pose=f32(jaw),
    eyes_pose=f32(eyes),
    translation=f32(trans),
    static_offset=jnp.zeros((model.num_vertices, 3), jnp.float32),
  )


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HeadRenderer:
  """Precomputed per-model data for `render` (canonical positions, parts, culling)."""

  faces: np.ndarray
  canonical: np.ndarray
  face_part: np.ndarray
  cull: np.ndarray
  info: textures.TextureInfo

  @staticmethod
  def for_model(model: FlameModel) -> "HeadRenderer":
    faces = np.asarray(model.faces, np.int64)
    part = sh.part_labels(model)
    two_sided = region_face_mask(model, "teeth") if "teeth" in model.region_names else np.zeros(len(faces), bool)
    return HeadRenderer(
      faces=faces,
      canonical=np.asarray(model.v_template, np.float64),
      face_part=part[faces].max(axis=1),
      cull=~two_sided,
      info=textures.TextureInfo.from_model(model),
    )

  def render(
    self, verts_world: np.ndarray, cam: RigCamera, names: tuple[str, ...] = ("skin",), supersample: int = 2
  ) -> tuple[list[np.ndarray], np.ndarray]:
    """The head in one or more textures from one rasterization: ([image [H,W,3] float32 on white
    per texture], alpha [H,W] float32)."""
    ss = int(supersample)
    v = np.asarray(verts_world, np.float64)
    w2c = np.asarray(cam.world_to_camera, np.float64)
    vc = v @ w2c[:3, :3].T + w2c[:3, 3]
    fid, bary = mesh_raster.rasterize(
      vc,
      self.faces,
      cam.fx * ss,
      cam.fy * ss,
      cam.cx * ss,
      cam.cy * ss,
      cam.width * ss,
      cam.height * ss,
      cull=self.cull,
    )
    cov = fid >= 0
    fcov = fid[cov]
    canon = mesh_raster.interpolate(self.canonical, self.faces, fid, bary)
    nrm = mesh_raster.interpolate(mesh_raster.vertex_normals(v, self.faces), self.faces, fid, bary)
    # two-sided faces (teeth): light the side that faces the camera
    pos = mesh_raster.interpolate(v, self.faces, fid, bary)
    eye = np.linalg.inv(w2c)[:3, 3]
    flip = ~self.cull[fcov] & (np.einsum("nc,nc->n", nrm, pos - eye) > 0)
    nrm[flip] *= -1
    images = []
    for name in names:
      img = np.ones((cam.height * ss, cam.width * ss, 3))
      img[cov] = textures.shade(textures.albedo(canon, self.face_part[fcov], name, self.info), nrm)
      images.append(mesh_raster.downsample(img, ss).astype(np.float32))
    return images, mesh_raster.downsample(cov.astype(np.float64), ss).astype(np.float32)


def contact_sheet(images: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
  """Rows of equally sized images -> one uint8 image on a grey grid."""
  h, w = images[0][0].shape[:2]
  rows, cols = len(images), max(len(r) for r in images)
  sheet = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 0.6, np.float32)
  for i, r in enumerate(images):
    for j, im in enumerate(r):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      sheet[y : y + h, x : x + w] = im
  return (np.clip(sheet, 0, 1) * 255 + 0.5).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# The generator
# ------------------------------------------------------------------------------------------------


def write_frame(
  writers, renderer: "HeadRenderer", verts: np.ndarray, t: int, cam, textures: tuple[str, ...], supersample: int
) -> list[np.ndarray]:
  """Renders the head posed as `verts` (timestep t) from `cam` once, in each of `textures`, and adds
  each image with the mask and the camera to its dataset writer (`writers`, one per texture);
  returns the images."""
  imgs, alpha = renderer.render(verts, cam, tuple(textures), supersample)
  for w, img in zip(writers, imgs, strict=True):
    w.add_frame(
      timestep=t,
      camera_index=cam.index,
      image=img,
      mask=alpha,
      world_to_camera=cam.world_to_camera,
      fx=cam.fx,
      fy=cam.fy,
      cx=cam.cx,
      cy=cam.cy,
      camera_id=cam.serial,
      timestep_id=f"frame_{t:05d}",
    )
  return imgs


def generate(cfg: SynthConfig, *, progress: bool = True, also: dict[str, str | os.PathLike] | None = None) -> dict:
  """Writes the dataset; returns a summary dict (also saved as OUT/synth_info.json).

  `also`: {texture: folder} of more datasets with the same motion, cameras and seed in other
  textures, written in the same pass (one mesh rasterization per frame for all of them; each folder
  gets its own summary). The images equal those of separate `generate` calls."""
  from PIL import Image

  t0 = time.perf_counter()
  targets = [cfg] + [dataclasses.replace(cfg, out=Path(folder), texture=tex) for tex, folder in (also or {}).items()]
  for c in targets:
    out = Path(c.out)
    if out.exists() and not out.is_dir():
      raise DatasetExistsError(f"{out} is a file; OUT must be a folder")
    if (out / "transforms.json").exists() and not c.overwrite:
      raise DatasetExistsError(f"{out} already holds a dataset; pass --overwrite to replace it")
  writers = [DatasetWriter(Path(c.out), overwrite=c.overwrite) for c in targets]
  base = sh.make_synthetic_flame(0, n_shape=cfg.n_shape, n_expr=cfg.n_expr, rows=cfg.rows, cols=cfg.cols)
  for c in targets:
    save_flame(base, Path(c.out) / FLAME_FILE)
  model = add_teeth(base)
  params = make_motion(model, cfg.num_timesteps, cfg.seed, scale=cfg.motion_scale)
  rig = nersemble_like_rig(
    cfg.num_cameras, cfg.width, cfg.height, distance=cfg.camera_distance, view_height=cfg.view_height
  )
  verts = np.asarray(jax.jit(flame_forward)(model, params))  # [T,V,3]
  renderer = HeadRenderer.for_model(model)
  T = cfg.num_timesteps
  sheet_ts = sorted(set(np.linspace(0, T - 1, min(4, T)).round().astype(int).tolist()))
  sheets: list[dict[int, list]] = [{t: [] for t in sheet_ts} for _ in targets]
  it = [(t, c) for t in range(T) for c in rig]
  t_render = 0.0
  names = tuple(c.texture for c in targets)
  # closed on any exit (Ctrl-C included), so the bar's last line comes before the command's message
  with tqdm(total=len(it), desc="gaedit synth", unit="img", disable=not progress) as bar:
    for t in range(T):
      for w in writers:
        w.add_flame_param(t, params.at(t))
      for cam in rig:
        t1 = time.perf_counter()
        imgs = write_frame(writers, renderer, verts[t], t, cam, names, cfg.supersample)
        t_render += time.perf_counter() - t1
        if t in sheet_ts:
          for sheet, img in zip(sheets, imgs):
            sheet[t].append(img)
        bar.update(1)
  seconds = time.perf_counter() - t0
  infos = []
  for c, w, sheet in zip(targets, writers, sheets):
    out = Path(c.out)
    w.add_canonical(params)
    paths = w.finish(train_ratio=c.train_ratio)
    sheet_path = None
    if c.contact_sheet:
      sheet_path = out / "contact_sheet.png"
      Image.fromarray(contact_sheet([sheet[t] for t in sheet_ts])).save(sheet_path)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    info = dict(
      config={k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(c).items()},
      flame_model=FLAME_FILE,
      num_vertices=model.num_vertices,
      num_faces=model.num_faces,
      n_shape=model.n_shape,
      n_expr=model.n_expr,
      num_images=len(it),
      splits={k: len(json.loads(p.read_text())["frames"]) for k, p in paths.items()},
      contact_sheet=None if sheet_path is None else str(sheet_path.name),
      seconds_total=round(seconds, 2),
      seconds_rendering=round(t_render, 2),
      bytes=size,
      contact_sheet_timesteps=sheet_ts,
    )
    (out / "synth_info.json").write_text(json.dumps(info, indent=2))
    infos.append(info)
  return infos[0]
