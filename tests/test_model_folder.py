"""Trained avatars in and out (io/model_folder.py, `gaedit export`): GaussianAvatars output folders
and `chkpnt<N>.pth` checkpoints written here in GaussianAvatars' own layout (PLY properties as its
save_ply writes them, cfg_args as `str(argparse.Namespace)`, a real `torch.save` of its capture
tuple with nn.Parameter tensors and an Adam state dict) render exactly like the same Gaussians in our
own folder; export -> import is bit-exact; cfg_args is read without evaluating anything."""

import argparse
import dataclasses
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from recon_data import make_tiny_dataset

from gaedit_jax.avatar import fit_flame_dims, load_flame_model, load_trained, pose_vertices, render_views
from gaedit_jax.cli import main as cli
from gaedit_jax.data.dataset import AvatarDataset
from gaedit_jax.data.synthetic import FLAME_FILE
from gaedit_jax.errors import InputError
from gaedit_jax.flame import FlameMotion
from gaedit_jax.io.model_folder import (
  GA_MODEL_PARAMS,
  parse_cfg_args,
  read_avatar,
  write_model_folder,
)
from gaedit_jax.io.ply import read_ply
from gaedit_jax.render.types import RenderConfig
from gaedit_jax.rig import Avatar, init_avatar, to_world, triangle_frames

ITER = 30
GA_NPZ_KEYS = [
  "shape",
  "expr",
  "rotation",
  "neck_pose",
  "jaw_pose",
  "eyes_pose",
  "translation",
  "static_offset",
  "dynamic_offset",
]


# ------------------------------------------------------------------------------------------------
# GaussianAvatars' layout, written the way its code writes it (independent of io/ply.py)
# ------------------------------------------------------------------------------------------------


def ga_arrays(avatar: Avatar) -> dict:
  """The active Gaussians as GaussianAvatars' tensors: features_dc [N,1,3], features_rest [N,K-1,3],
  opacity [N,1], binding int64."""
  m = np.asarray(avatar.active)
  g = lambda f: np.ascontiguousarray(np.asarray(getattr(avatar, f))[m], np.float32)
  return dict(
    xyz=g("xyz"),
    features_dc=g("sh_dc"),
    features_rest=g("sh_rest"),
    scaling=g("log_scale"),
    rotation=g("rotation"),
    opacity=g("opacity_logit")[:, None],
    binding=np.asarray(avatar.binding)[m].astype(np.int64),
  )


def write_ga_ply(path: Path, a: dict) -> None:
  """GaussianModel.save_ply: x,y,z, nx,ny,nz, f_dc_*, f_rest_* (features.transpose(1,2).flatten),
  opacity, scale_*, rot_*, binding_0, all float32, binary little endian (plyfile)."""
  n = a["xyz"].shape[0]
  f_dc = a["features_dc"].transpose(0, 2, 1).reshape(n, -1)
  f_rest = a["features_rest"].transpose(0, 2, 1).reshape(n, -1)
  names = ["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(f_dc.shape[1])]
  names += [f"f_rest_{i}" for i in range(f_rest.shape[1])] + ["opacity"] + [f"scale_{i}" for i in range(3)]
  names += [f"rot_{i}" for i in range(4)] + ["binding_0"]
  attrs = np.concatenate(
    [
      a["xyz"],
      np.zeros_like(a["xyz"]),
      f_dc,
      f_rest,
      a["opacity"],
      a["scaling"],
      a["rotation"],
      a["binding"][:, None].astype(np.float32),
    ],
    axis=1,
  )
  el = np.empty(n, [(k, "<f4") for k in names])
  for i, k in enumerate(names):
    el[k] = attrs[:, i]
  head = "ply\nformat binary_little_endian 1.0\nelement vertex %d\n" % n
  head += "".join(f"property float {k}\n" for k in names) + "end_header\n"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(head.encode("ascii") + el.tobytes())


def ga_load_ply(path: Path, max_sh_degree: int) -> dict:
  """GaussianModel.load_ply's reading of the properties (as GaussianAvatars does it)."""
  d = read_ply(path)
  n = d["x"].shape[0]
  extra = sorted([k for k in d if k.startswith("f_rest_")], key=lambda x: int(x.split("_")[-1]))
  assert len(extra) == 3 * (max_sh_degree + 1) ** 2 - 3
  fe = np.stack([d[k] for k in extra], 1).reshape(n, 3, (max_sh_degree + 1) ** 2 - 1)
  return dict(
    xyz=np.stack([d["x"], d["y"], d["z"]], 1),
    features_dc=np.stack([d[f"f_dc_{i}"] for i in range(3)], 1)[:, :, None].transpose(0, 2, 1),
    features_rest=fe.transpose(0, 2, 1),
    opacity=d["opacity"][:, None],
    scaling=np.stack([d[f"scale_{i}"] for i in range(3)], 1),
    rotation=np.stack([d[f"rot_{i}"] for i in range(4)], 1),
    binding=d["binding_0"].astype(np.int32),
  )


def ga_flame_npz(path: Path, fp) -> None:
  """FlameGaussianModel.save_ply's flame_param.npz (its flame_param dict, float32)."""
  f = lambda x: np.asarray(x, np.float32)
  t, v = fp.rotation.shape[0], fp.static_offset.shape[-2]
  d = dict(
    shape=f(fp.shape),
    expr=f(fp.expr),
    rotation=f(fp.rotation),
    neck_pose=f(fp.neck_pose),
    jaw_pose=f(fp.jaw_pose),
    eyes_pose=f(fp.eyes_pose),
    translation=f(fp.translation),
    static_offset=f(fp.static_offset)[None],
    dynamic_offset=np.zeros((t, v, 3), np.float32),
  )
  np.savez(str(path), **d)


def ga_cfg_args(data: Path, model: Path, sh_degree: int) -> str:
  """train.py's prepare_output_and_logger: str(Namespace(**vars(ModelParams.extract(args))))."""
  a = dict(
    sh_degree=sh_degree,
    source_path=str(data),
    target_path="",
    model_path=str(model),
    images="images",
    resolution=-1,
    white_background=True,
    data_device="cuda",
    eval=True,
    bind_to_mesh=True,
    disable_flame_static_offset=False,
    not_finetune_flame_params=False,
    select_camera_id=-1,
  )
  return str(argparse.Namespace(**a))


def write_ga_checkpoint(
  path: Path, a: dict, num_faces: int, num_timesteps: int, n_expr: int, *, active_sh_degree: int, fields: int = 14
) -> None:
  """train.py: torch.save((gaussians.capture(), iteration), path), with GaussianModel.training_setup's
  Adam param groups (+ FlameGaussianModel's pose / trans / expr groups) after one step."""
  import torch

  P = lambda x: torch.nn.Parameter(torch.from_numpy(np.array(x)).requires_grad_(True))
  xyz, f_dc, f_rest = P(a["xyz"]), P(a["features_dc"]), P(a["features_rest"])
  opacity, scaling, rotation = P(a["opacity"]), P(a["scaling"]), P(a["rotation"])
  groups = [
    {"params": [xyz], "lr": 5e-3, "name": "xyz"},
    {"params": [f_dc], "lr": 2.5e-3, "name": "f_dc"},
    {"params": [f_rest], "lr": 2.5e-3 / 20, "name": "f_rest"},
    {"params": [opacity], "lr": 0.05, "name": "opacity"},
    {"params": [scaling], "lr": 0.017, "name": "scaling"},
    {"params": [rotation], "lr": 1e-3, "name": "rotation"},
  ]
  opt = torch.optim.Adam(groups, lr=0.0, eps=1e-15)
  fl = {
    k: torch.zeros(num_timesteps, n, requires_grad=True)
    for k, n in dict(rotation=3, neck_pose=3, jaw_pose=3, eyes_pose=6, translation=3, expr=n_expr).items()
  }
  opt.add_param_group(
    {"params": [fl[k] for k in ("rotation", "neck_pose", "jaw_pose", "eyes_pose")], "lr": 1e-5, "name": "pose"}
  )
  opt.add_param_group({"params": [fl["translation"]], "lr": 1e-6, "name": "trans"})
  opt.add_param_group({"params": [fl["expr"]], "lr": 1e-3, "name": "expr"})
  params = [xyz, f_dc, f_rest, opacity, scaling, rotation] + list(fl.values())
  for p in params:
    p.grad = torch.full_like(p, 1e-3)
  opt.step()  # fills exp_avg / exp_avg_sq / step; then the parameters get their trained values back
  with torch.no_grad():
    for p, k in zip(params[:6], ("xyz", "features_dc", "features_rest", "opacity", "scaling", "rotation")):
      p.copy_(torch.from_numpy(a[k]))
  binding = torch.from_numpy(a["binding"])
  counter = torch.bincount(binding, minlength=num_faces).int()
  n = binding.shape[0]
  cap = (
    active_sh_degree,
    xyz,
    f_dc,
    f_rest,
    scaling,
    rotation,
    opacity,
    binding,
    counter,
    torch.zeros(n),
    torch.zeros(n, 1),
    torch.zeros(n, 1),
    opt.state_dict(),
    1.7,
  )
  if fields == 16:  # GaussianAvatar-Editor appends gs_edit_filter, gs_edit_face_filter
    cap = cap + (None, None)
  elif fields == 12:  # 3D Gaussian Splatting: no binding
    cap = cap[:7] + cap[9:]
  torch.save((cap, ITER), path)


# ------------------------------------------------------------------------------------------------
# Fixture: one avatar in our folder, in a GA folder (+ checkpoint), and a lone GA checkpoint
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("gaio")
  data = make_tiny_dataset(root / "data")
  flame_path = data / FLAME_FILE
  full = load_flame_model(flame_path)
  nf = int(full.num_faces)
  tracking = fit_flame_dims(full, AvatarDataset(data, "train", cache_size=0).flame_params)
  k = jax.random.split(jax.random.key(0), 8)
  t = tracking.expr.shape[0]
  tuned = dataclasses.replace(  # "fine-tuned" FLAME parameters, different from the tracking
    tracking,
    expr=tracking.expr + 0.3 * jax.random.normal(k[0], tracking.expr.shape),
    jaw_pose=tracking.jaw_pose + 0.05 * jax.random.normal(k[1], (t, 3)),
  )
  cap, extra = nf + 40, 30
  av = init_avatar(k[2], nf, capacity=cap, sh_degree=1)
  active = jnp.arange(cap) < nf + extra
  binding = av.binding.at[nf : nf + extra].set(jax.random.randint(k[3], (extra,), 0, nf))
  avatar = Avatar(
    xyz=0.3 * jax.random.normal(k[4], (cap, 3)),
    log_scale=0.3 * jax.random.normal(k[5], (cap, 3)) - 0.2,
    rotation=jax.random.normal(k[6], (cap, 4)),
    opacity_logit=1.0 + jax.random.normal(k[7], (cap,)),
    sh_dc=0.5 * jax.random.normal(k[0], (cap, 1, 3)) + 0.3,
    sh_rest=0.1 * jax.random.normal(k[1], (cap, 3, 3)),
    binding=binding,
    active=active,
  )
  ours = root / "ours"
  write_model_folder(
    ours,
    avatar,
    tuned,
    iteration=ITER,
    data=data,
    flame_model=flame_path,
    config=dict(image_scale=1.0, white_background=True, sh_degree=1),
  )
  ga = root / "ga"
  a = ga_arrays(avatar)
  write_ga_ply(ga / "point_cloud" / f"iteration_{ITER}" / "point_cloud.ply", a)
  ga_flame_npz(ga / "point_cloud" / f"iteration_{ITER}" / "flame_param.npz", tuned)
  (ga / "cfg_args").write_text(ga_cfg_args(data, ga, 1))
  write_ga_checkpoint(ga / f"chkpnt{ITER}.pth", a, nf, t, tracking.expr.shape[-1], active_sh_degree=1)
  lone = root / "lone"
  lone.mkdir()
  write_ga_checkpoint(lone / f"chkpnt{ITER}.pth", a, nf, t, tracking.expr.shape[-1], active_sh_degree=1, fields=16)
  return dict(
    data=data,
    flame=flame_path,
    full=full,
    avatar=avatar,
    tuned=tuned,
    tracking=tracking,
    ours=ours,
    ga=ga,
    lone=lone,
    arrays=a,
  )


def _render(tr, data):
  ds = AvatarDataset(data, "val", cache_size=0)
  b = ds.batch([0, 1])
  return render_views(
    tr.avatar,
    tr.model,
    tr.flame,
    np.asarray(b.timestep),
    b.camera,
    jnp.asarray(ds.background),
    RenderConfig(sh_degree=1),
  )


def _same_avatar(x: Avatar, y: Avatar):
  for f in ("xyz", "log_scale", "rotation", "opacity_logit", "sh_dc", "sh_rest", "binding"):
    a, b = np.asarray(getattr(x, f)), np.asarray(getattr(y, f))
    assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), f


def _active(avatar: Avatar) -> Avatar:
  m = np.asarray(avatar.active)
  return Avatar(**{f: jnp.asarray(np.asarray(getattr(avatar, f))[m]) for f in avatar.__dataclass_fields__})


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------


def test_ga_folder_and_checkpoint_render_like_ours(setup):
  s = setup
  ours = load_trained(s["ours"])
  assert ours.cfg["layout"] == "gaedit"
  img = _render(ours, s["data"])
  assert img.std() > 0.02  # the head is visible
  it_ply = s["ga"] / "point_cloud" / f"iteration_{ITER}" / "point_cloud.ply"  # what GA's viewer opens
  for src in (s["ga"], it_ply, s["ga"] / f"chkpnt{ITER}.pth"):
    tr = load_trained(src, flame_model=s["flame"])
    assert tr.cfg["layout"] == ("gaussianavatars-checkpoint" if src.suffix == ".pth" else "gaussianavatars")
    assert tr.cfg["data"] == str(s["data"]) and tr.cfg["config"]["white_background"] is True
    assert tr.it_dir.name == f"iteration_{ITER}"
    _same_avatar(tr.avatar, ours.avatar)
    for key in FlameMotion.FIELDS:
      assert np.array_equal(np.asarray(getattr(tr.flame, key)), np.asarray(getattr(ours.flame, key))), key
    np.testing.assert_array_equal(_render(tr, s["data"]), img)
  # a checkpoint alone (here GaussianAvatar-Editor's 16-field capture): FLAME from the dataset's tracking
  tr = load_trained(s["lone"], data=s["data"], flame_model=s["flame"])
  assert tr.cfg["layout"] == "gaussianavatars-checkpoint" and tr.cfg["config"]["spatial_lr_scale"] == 1.7
  _same_avatar(tr.avatar, ours.avatar)
  for key in FlameMotion.FIELDS:
    assert np.array_equal(np.asarray(getattr(tr.flame, key)), np.asarray(getattr(s["tracking"], key))), key
  ref = load_trained(s["ours"])._replace(flame=s["tracking"].motion)
  np.testing.assert_array_equal(_render(tr, s["data"]), _render(ref, s["data"]))


def test_checkpoint_missing_pieces_name_the_flag(setup, tmp_path):
  s = setup
  with pytest.raises(InputError, match="--flame-model"):
    load_trained(s["lone"] / f"chkpnt{ITER}.pth")
  with pytest.raises(InputError, match="--flame-model"):
    load_trained(s["ga"])  # cfg_args records no FLAME model
  with pytest.raises(InputError, match="--data"):
    load_trained(s["lone"], flame_model=s["flame"])
  # through the command line: gaedit render passes --flame-model / --data through
  with pytest.raises(InputError, match="--flame-model"):
    cli(["render", "--model", str(s["lone"]), "--out", str(tmp_path / "r")])
  out = tmp_path / "r2"
  cli(
    [
      "render",
      "--model",
      str(s["lone"]),
      "--out",
      str(out),
      "--data",
      str(s["data"]),
      "--flame-model",
      str(s["flame"]),
      "--splits",
      "val",
      "--max-frames",
      "1",
    ]
  )
  assert len(list((out / "val" / f"ours_{ITER}" / "renders").glob("*.png"))) == 1
  # 3DGS checkpoints (no binding) are refused with a clear message
  a = s["arrays"]
  write_ga_checkpoint(tmp_path / "chkpnt1.pth", a, int(s["full"].num_faces), 4, 8, active_sh_degree=1, fields=12)
  with pytest.raises(InputError, match="no binding"):
    read_avatar(tmp_path / "chkpnt1.pth")


def test_export_gaussianavatars_roundtrip_is_exact(setup, tmp_path):
  s = setup
  out = tmp_path / "ga_out"
  with pytest.warns(UserWarning, match="FLAME 2023"):  # the synthetic head is not GA's FLAME
    cli(["export", str(s["ours"]), "--format", "gaussianavatars", "--out", str(out)])
  it = out / "point_cloud" / f"iteration_{ITER}"
  # cfg_args: the repr of an argparse Namespace with every field GA's render.py reads
  text = (out / "cfg_args").read_text()
  args = parse_cfg_args(text)
  assert text == str(argparse.Namespace(**args))
  assert set(GA_MODEL_PARAMS) <= set(args)
  assert args["bind_to_mesh"] is True and args["eval"] is True and args["sh_degree"] == 1
  assert args["source_path"] == str(s["data"]) and args["model_path"] == str(out.absolute())
  assert args["white_background"] is True and args["resolution"] == -1
  # the PLY as GaussianAvatars' load_ply reads it
  g = ga_load_ply(it / "point_cloud.ply", max_sh_degree=1)
  for key, v in s["arrays"].items():
    assert np.array_equal(g[key], v.astype(g[key].dtype)), key
  with np.load(it / "flame_param.npz") as z:
    assert sorted(z.files) == sorted(GA_NPZ_KEYS)
    assert z["static_offset"].shape == (1,) + s["tuned"].static_offset.shape
    assert z["dynamic_offset"].shape == (s["tuned"].expr.shape[0],) + s["tuned"].static_offset.shape
    assert not z["dynamic_offset"].any()
  # import: bit-identical Gaussians and FLAME arrays; the FLAME model is recorded for the way back
  back = read_avatar(out)
  assert back.cfg["layout"] == "gaussianavatars" and back.iteration == ITER
  _same_avatar(back.avatar, _active(s["avatar"]))
  for key in ("shape", "static_offset") + tuple(s["tuned"].PER_TIMESTEP):
    a, b = np.asarray(getattr(back.flame, key)), np.asarray(getattr(s["tuned"], key))
    assert a.dtype == b.dtype and np.array_equal(a, b), key
  tr = load_trained(out)
  assert tr.cfg["flame_model"] == str(s["flame"].absolute())
  # the checkpoint exports too (its iteration's flame_param.npz next to it)
  out2 = tmp_path / "from_ckpt"
  with pytest.warns(UserWarning, match="FLAME 2023"):
    cli(["export", str(s["ga"] / f"chkpnt{ITER}.pth"), "--out", str(out2), "--sh-degree", "3"])
  g3 = ga_load_ply(out2 / "point_cloud" / f"iteration_{ITER}" / "point_cloud.ply", max_sh_degree=3)
  assert np.array_equal(g3["features_rest"][:, :3], s["arrays"]["features_rest"])
  assert not g3["features_rest"][:, 3:].any()
  with pytest.raises(InputError, match="--overwrite"):
    cli(["export", str(s["ours"]), "--out", str(out)])


def test_export_world_ply(setup, tmp_path):
  s = setup
  cli(["export", str(s["ours"]), "--format", "ply", "--timestep", "2", "--out", str(tmp_path)])
  d = read_ply(tmp_path / "world_timestep_00002.ply")
  assert "binding_0" not in d
  tr = load_trained(s["ours"])
  g = to_world(tr.avatar, triangle_frames(pose_vertices(tr.model, tr.flame, jnp.asarray(2)), tr.model.faces))
  np.testing.assert_allclose(np.stack([d["x"], d["y"], d["z"]], 1), np.asarray(g.means), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.exp(np.stack([d[f"scale_{i}"] for i in range(3)], 1)), np.asarray(g.scales), rtol=1e-5)
  with pytest.raises(InputError, match="--timestep"):
    cli(["export", str(s["ours"]), "--format", "ply", "--timestep", "99", "--out", str(tmp_path)])


@pytest.mark.slow
def test_edit_starts_from_a_ga_checkpoint(setup, tmp_path):
  """As GaussianAvatar-Editor starts every edit from a GaussianAvatars chkpnt<N>.pth."""
  s = setup
  paint = make_tiny_dataset(tmp_path / "paint", texture="facepaint")
  out = tmp_path / "edited"
  cli(
    [
      "edit",
      "--avatar",
      str(s["lone"] / f"chkpnt{ITER}.pth"),
      "--data",
      str(s["data"]),
      "--flame-model",
      str(s["flame"]),
      "--out",
      str(out),
      "--editor",
      "synthetic",
      "--target-data",
      str(paint),
      "--iterations",
      "1",
      "--dump-interval",
      "0",
      "--checkpoint-interval",
      "1",
      "--no-progress",
      "--no-tensorboard",
      "--lambda-lpips",
      "0",
    ]
  )
  tr = load_trained(out)  # our layout, the FLAME model recorded
  assert tr.cfg["layout"] == "gaedit" and tr.cfg["config"]["white_background"] is True
  assert np.array_equal(np.asarray(tr.avatar.binding), s["arrays"]["binding"])


@pytest.mark.parametrize(
  "text",
  [
    "Namespace(sh_degree=3, source_path=__import__('os').system('touch {m}'))",
    "Namespace(source_path=open('{m}', 'w').name)",
    "Namespace(sh_degree=os.sep)",
    "Namespace(images=[1, (lambda: open('{m}', 'w'))()])",
    "__import__('os').system('touch {m}')",
    "Namespace(**{{'a': open('{m}', 'w')}})",
    "Namespace('{m}')",
    "Namespace(x=1); open('{m}', 'w')",
  ],
)
def test_cfg_args_with_code_is_refused_unexecuted(setup, tmp_path, text):
  marker = tmp_path / "executed"
  text = text.format(m=marker)
  with pytest.raises(InputError, match="cfg_args"):
    parse_cfg_args(text)
  folder = tmp_path / "ga"
  shutil.copytree(setup["ga"] / "point_cloud", folder / "point_cloud")
  (folder / "cfg_args").write_text(text)
  with pytest.raises(InputError, match="cfg_args"):
    load_trained(folder, flame_model=setup["flame"])
  assert not marker.exists()


def test_cfg_args_literals_are_read():
  ns = argparse.Namespace(
    sh_degree=3,
    source_path="/d/x y'z",
    resolution=-1,
    eval=True,
    select_camera_id=-1,
    target_path="",
    ratio=0.5,
    extra=None,
    ids=[1, 2],
    pair=(3, 4),
  )
  assert parse_cfg_args(str(ns)) == vars(ns)
