"""Official FLAME files: a 5023-vertex / 9976-face model in the official pickle layout with the
official 14-region FLAME_masks.pkl (no GaussianAvatars regions in it) loads with GaussianAvatars'
built-in regions, gets its teeth, and reconstructs, edits and renders (the model is a stand-in
built in `flame_official_data`, the real FLAME cannot be shipped)."""

from __future__ import annotations

import dataclasses
import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flame_official_data import make_flame_like_head, write_dataset, write_official_files

from gaedit_jax import flame as F
from gaedit_jax.edit.mouth import mouth_face_mask
from gaedit_jax.errors import InputError
from gaedit_jax.flags import build
from gaedit_jax.flame import synthetic as sh
from gaedit_jax.flame.model import _regions_dict
from gaedit_jax.flame.regions import (
  FIXED_REGIONS,
  LIP_INSIDE_RING_EXTRA,
  OFFICIAL_REGIONS,
  TEETH_LEFT_HALF,
  TEETH_RIGHT_HALF,
)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
  root = tmp_path_factory.mktemp("official")
  head = make_flame_like_head()
  path, masks = write_official_files(head, root / "flame")
  return dict(root=root, head=head, path=path, masks=masks)


def test_official_files_load_with_the_built_in_regions(official):
  path, head = official["path"], official["head"]
  with open(official["masks"], "rb") as f:
    assert set(pickle.load(f)) == set(OFFICIAL_REGIONS)  # exactly the 14 official regions
  m = F.load_flame(path)
  assert (m.num_vertices, m.num_faces, m.n_shape, m.n_expr) == (5023, 9976, 300, 100)
  for name in OFFICIAL_REGIONS:
    np.testing.assert_array_equal(m.region(name), head.region(name), err_msg=name)
  for name, ids in FIXED_REGIONS.items():  # GaussianAvatars' own, built in
    assert m.region_vertices(name).tolist() == sorted(set(ids)), name
  np.testing.assert_array_equal(np.asarray(m.lip_ring_upper), FIXED_REGIONS["lip_outside_ring_upper"])
  np.testing.assert_array_equal(np.asarray(m.lip_ring_lower), FIXED_REGIONS["lip_outside_ring_lower"])
  r = m.region
  np.testing.assert_array_equal(r("hair"), r("scalp") & ~(r("face") | r("neck")))
  np.testing.assert_array_equal(r("eyeballs"), r("left_eyeball") | r("right_eyeball"))
  np.testing.assert_array_equal(r("sclerae"), r("eyeballs") & ~r("irises"))
  np.testing.assert_array_equal(r("left_eye"), r("left_eye_region") | r("left_eyeball"))
  assert set(m.region_vertices("lip_inside_ring")) == (
    set(FIXED_REGIONS["lip_inside_ring_upper"])
    | set(FIXED_REGIONS["lip_inside_ring_lower"])
    | set(LIP_INSIDE_RING_EXTRA)
  )
  not_skin = r("eyeballs") | r("hair") | r("lips_tight") | r("boundary")
  np.testing.assert_array_equal(r("skin"), ~not_skin)

  t = F.add_teeth(m)
  assert (t.num_vertices, t.num_faces) == (5143, 9976 + 168)
  # the teeth of FLAME's lip rings sit in this head's mouth: the same as from its own rings
  np.testing.assert_allclose(np.asarray(t.v_template), np.asarray(F.add_teeth(head).v_template), atol=1e-7)
  teeth = np.asarray(t.v_template)[5023:]
  assert np.abs(teeth[:, 0]).max() < 0.03 and np.abs(teeth[:, 1] - sh.MOUTH_Y).max() < 0.03
  # left / right halves gain GA's teeth columns (its right list lacks vertex 5096)
  assert set(t.region_vertices("left_half")[-64:]) == {5023 + i for i in TEETH_LEFT_HALF}
  assert set(t.region_vertices("right_half")[-63:]) == {5023 + i for i in TEETH_RIGHT_HALF}
  assert not t.region("right_half")[5096] and t.region("left_half")[5023]
  # the editor's mouth: all teeth faces and the lip faces, all at the mouth
  fm = mouth_face_mask(t, source=path)
  teeth_faces = F.region_face_mask(t, "teeth")
  assert teeth_faces.sum() == 168 and (fm >= teeth_faces).all() and fm.sum() > 168 + 100
  c = np.asarray(t.v_template)[np.asarray(t.faces)[fm]].mean(1)
  assert np.abs(c[:, 0]).max() < 0.035 and np.abs(c[:, 1] - sh.MOUTH_Y).max() < 0.04 and c[:, 2].min() > 0.02


def test_masks_file_regions_override_the_built_in_ones(official, tmp_path):
  extra = tmp_path / "custom_masks.pkl"
  extra.write_bytes(pickle.dumps({"lips_tight": np.array([1, 2, 3])}, protocol=2))
  m = F.load_flame(official["path"], masks_path=[official["masks"], extra])
  assert m.region_vertices("lips_tight").tolist() == [1, 2, 3]
  assert m.region_vertices("lip_inside").tolist() == sorted(FIXED_REGIONS["lip_inside"])
  # skin is derived from the regions in force
  assert m.region("skin")[1] == 0 and m.region("skin")[FIXED_REGIONS["lips_tight"][0]]


def test_other_topology_must_bring_the_mouth_regions(tmp_path):
  """A non-FLAME model whose masks lack lips_tight / lip_inside: a one-line input error naming the
  model file, the missing regions and the masks file (before any edit step)."""
  head = sh.make_synthetic_flame(0, n_shape=4, n_expr=4, rows=16, cols=24, eye_res=(4, 6))
  regions = {n: head.region(n) for n in head.region_names if n not in ("lips_tight", "lip_inside")}
  path = F.save_flame(F.with_regions(head, regions), tmp_path / "other.pkl")
  model = F.add_teeth(F.load_flame(path))
  assert "lips_tight" not in model.region_names  # no built-ins for this topology
  with pytest.raises(InputError) as e:
    mouth_face_mask(model, source=path)
  msg = str(e.value)
  assert isinstance(e.value, F.FlameFileError) and "\n" not in msg
  assert str(path) in msg and "['lips_tight', 'lip_inside']" in msg and "masks file" in msg
  assert mouth_face_mask(
    F.with_regions(model, dict(_regions_dict(model), lips_tight=model.region("lips"), lip_inside=model.region("lips")))
  ).any()
  # and without ordered lip rings add_teeth cannot build the teeth
  no_rings = F.with_regions(dataclasses.replace(head, lip_ring_upper=None, lip_ring_lower=None), regions)
  with pytest.raises(InputError, match="lip_outside_ring_upper"):
    F.add_teeth(no_rings)


@pytest.mark.slow
def test_official_files_reconstruct_edit_and_render(official, tmp_path):
  from recon_data import tiny_config

  from gaedit_jax.cli import main as cli
  from gaedit_jax.edit.loop import EditConfig, EditRun
  from gaedit_jax.eval_recon import evaluate_model
  from gaedit_jax.nets.lpips import lpips_images, save_lpips
  from gaedit_jax.nets.tiny import random_lpips_params
  from gaedit_jax.reconstruct import Trainer

  root = official["root"]
  model_teeth = F.add_teeth(official["head"])
  data = write_dataset(model_teeth, root / "data", texture="skin")
  paint = write_dataset(model_teeth, root / "facepaint", texture="facepaint")
  avatar = tmp_path / "avatar"
  res = Trainer(
    tiny_config(
      data, avatar, flame_model=official["path"], iterations=4, checkpoint_interval=4, position_lr_max_steps=4
    )
  ).run()
  assert res["iterations"] == 4 and res["num_gaussians"] >= 9976 + 168
  assert json.loads((avatar / "cfg.json").read_text())["flame_model"] == str(official["path"].absolute())

  (tmp_path / "lp").mkdir()
  lp = random_lpips_params(0)
  save_lpips(lp, tmp_path / "lp" / "lpips_vgg.safetensors")
  out = tmp_path / "edited"
  run = EditRun(
    build(
      EditConfig,
      avatar=avatar,
      out=out,
      editor="synthetic",
      target_data=paint,
      iterations=2,
      checkpoint_interval=0,
      dump_interval=0,
      progress=False,
      tensorboard=False,
      lpips_weights=tmp_path / "lp",
    )
  )
  assert run.settings.lpips_input == "unit" and run.settings.lambda_lpips == 10.0
  mouth = np.asarray(run.mouth)
  faces = mouth_face_mask(run.model_local)
  np.testing.assert_array_equal(
    mouth, faces[np.asarray(run.state.avatar.binding)] & np.asarray(run.state.avatar.active)
  )
  assert 168 <= mouth.sum() < 0.2 * mouth.size
  # one step on a copy of the state: the LPIPS term is LPIPS of the [0, 1] images fed unchanged
  state = jax.tree.map(lambda x: jnp.array(x, copy=True), run.state)
  _, m, imgs = run.step(state, np.array([0]))
  unit = float(jnp.mean(lpips_images(lp, imgs["render"], imgs["edit"], "unit")))
  signed = float(jnp.mean(lpips_images(lp, imgs["render"], imgs["edit"], "signed")))
  np.testing.assert_allclose(float(m["lpips"]), unit, rtol=1e-4)
  assert abs(unit - signed) > 1e-3 * abs(signed)
  res = run.run()
  assert res["iterations"] == 2 and np.isfinite(run.history[-1]["loss"]) and np.isfinite(run.history[-1]["lpips"])
  assert (out / "point_cloud" / "iteration_2" / "point_cloud.ply").exists()

  cli(["render", "--model", str(out), "--out", str(tmp_path / "r"), "--splits", "test", "--max-frames", "2"])
  assert (tmp_path / "r" / "test" / "ours_2" / "renders.gif").exists()
  ev = {
    k: evaluate_model(
      avatar, ("val",), max_frames=1, out=tmp_path / k, lpips_weights=str(tmp_path / "lp"), lpips_input=k
    )["val"]["mean"]
    for k in ("unit", "signed")
  }
  assert ev["unit"]["psnr"] == ev["signed"]["psnr"] and ev["unit"]["lpips"] != ev["signed"]["lpips"]
