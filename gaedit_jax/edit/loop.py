"""`gaedit edit`: the GaussianAvatar-Editor loop (METHOD §5.2-5.5, 6, 7).

Starting from a reconstructed avatar (a `gaedit reconstruct` model folder), no densification, each
iteration (METHOD §5.3), in one jitted pure step (no host sync):
  render a random training view of the editing sequence (render + WABE outputs, one rasterizer
  forward kept as a VJP) -> 2D edit of the detached render by the editor (InstructPix2Pix or the
  synthetic-target editor; every `edit_every` iterations, else the view's cached edit)
  -> 10 L1 + 10 LPIPS to the edit (in the editor's square frame for IP2P; 10 D-SSIM instead of LPIPS
  in the --ssim-last phase, edit.schedule) + GA regularisers
  + 1000 (L1 + D-SSIM) mouth preservation against the photo inside a mouth mask (rendered, or
  read from --mouth-masks files)
  + 0.01 (L_D + L_G) conditional GAN (faithful: one joint gradient; standard: alternating, detached)
  -> WABE gradient mask on position / colour / opacity / scale (METHOD §6) -> Adam (fresh moments,
  METHOD §5.5 rates; FLAME per-timestep parameters fine-tuned; discriminator lr 1e-4).
Between steps: progress bar, TensorBoard, side-by-side dumps (render | 2D edit | current avatar),
orbax checkpoints (`--resume`). The result is written in the reconstruction model-folder format
(cfg.json + point_cloud/iteration_<N>/{point_cloud.ply, flame_param.npz}), so `gaedit render
--model OUT` works unchanged.
"""

from __future__ import annotations

import dataclasses
import warnings
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
  load_trained,
  pose,
  render_views,
)
from gaedit_jax.data.validate import validate_dataset
from gaedit_jax.edit import discriminator as D
from gaedit_jax.edit import external as X
from gaedit_jax.edit import regions as R
from gaedit_jax.edit import wabe as W
from gaedit_jax.edit.editors import EditContext, IP2PEditor, NoiseConfig, SyntheticEditor
from gaedit_jax.edit.evaluation import edit_targets, eval_and_save, eval_due, held_out_frames, training_frames
from gaedit_jax.edit.mouth import (
  MOUTH_LOSS_WEIGHT,
  MouthMasks,
  mouth_face_mask,
  mouth_gaussians,
  mouth_loss,
  render_mouth_mask,
)
from gaedit_jax.edit.schedule import SSIM_WEIGHT, edit_dssim, ssim_phase, ssim_phase_start
from gaedit_jax.errors import DatasetError, InputError
from gaedit_jax.flags import check_choice, check_flags, check_path, config_checks
from gaedit_jax.flame import FlameMotion
from gaedit_jax.io.media import save_png, side_by_side
from gaedit_jax.io.model_folder import find_model
from gaedit_jax.io.ply import save_avatar_ply, save_flame_npz
from gaedit_jax.losses import position_reg, scale_reg
from gaedit_jax.nets.images import from_square, to_square
from gaedit_jax.nets.lpips import load_lpips, lpips_images
from gaedit_jax.render import rasterize
from gaedit_jax.render.types import RenderConfig
from gaedit_jax.rig import Avatar
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
from gaedit_jax.train.loop import (
  CompileCounter,
  IsectCapacity,
  Prefetcher,
  cached_step,
  flush_metrics,
  jsonable,
  mixed_frame_order,
)
from gaedit_jax.train.run import Session, file_id
from gaedit_jax.train.run_dir import write_json


@dataclasses.dataclass
class EditConfig:
  """Edit a reconstructed avatar with a text instruction (defaults: the original editor's)."""

  avatar: Path
  """Reconstructed avatar: a `gaedit reconstruct` model folder, a GaussianAvatars output folder, or
  a GaussianAvatars chkpnt<N>.pth (file or folder)."""
  out: Path
  """Output model folder (same format as `gaedit reconstruct`: `gaedit render --model OUT` works)."""
  data: Path | None = None
  """Editing sequence (dataset folder). Default: the avatar's training data."""
  flame_model: Path | None = None
  """FLAME model file. Default: the one the avatar folder records (GaussianAvatars records none)."""
  intrinsics: Literal["file", "fov_x"] | None = None
  """Camera intrinsics of the editing sequence ("file" or GaussianAvatars' "fov_x", see `gaedit
  reconstruct --intrinsics`). Default: the avatar's."""
  editor: Literal["ip2p", "synthetic", "frames", "command"] = "ip2p"
  """2D editor: InstructPix2Pix (--ip2p, --prompt), the synthetic-target editor (--target-data),
  frames edited by any tool (--edited, from `gaedit export-frames`) or an external program run
  during the edit (--edit-command)."""
  ip2p: Path | None = None
  """InstructPix2Pix weights folder (Hugging Face layout of timbrooks/instruct-pix2pix)."""
  prompt: str = ""
  """Edit instruction, e.g. "Turn him into the Tolkien Elf"."""
  negative_prompt: str = ""
  """Negative prompt (original: empty)."""
  ip2p_size: int = 512
  """Square working resolution of InstructPix2Pix (METHOD §5.3: 512)."""
  ip2p_dtype: Literal["float32", "bfloat16"] = "float32"
  """UNet / VAE dtype."""
  ip2p_attention: Literal["cudnn", "xla"] = "cudnn"
  """UNet self-attention: cuDNN flash attention where it runs (NVIDIA GPU with --ip2p-dtype
  bfloat16; einsum elsewhere) or diffusers' einsum everywhere (see nets.ip2p.IP2PConfig)."""
  guidance_scale: float = 7.5
  """IP2P text guidance (METHOD §5.4)."""
  image_guidance_scale: float = 1.5
  """IP2P image guidance (METHOD §5.4)."""
  diffusion_steps: int = 20
  """DDIM steps per edit (METHOD §5.4)."""
  target_data: Path | None = None
  """Synthetic editor: the edited dataset (`gaedit synth OUT --texture facepaint`, same seed and size)."""
  synthetic_noise: float = 1.0
  """Synthetic editor: strength of the view-inconsistent noise (0: exact targets)."""
  iterations: int = 1000
  """Edit iterations (METHOD §5.1: 1000)."""
  edit_every: int = 1
  """Edit rate: regenerate a view's 2D edit every N iterations (1 = every iteration, METHOD §5.4);
  otherwise reuse the view's last edit (cache in memory, not checkpointed)."""
  batch_size: int = 1
  """Views per step (original: 1)."""
  devices: int | None = None
  """Devices to split each step's views over (data parallel: render, 2D edit, losses; default:
  all that divide the batch size). See gaedit_jax.parallel."""
  seed: int = 0
  """Seed of the view order, the editor noise and the discriminator init."""
  flame_init: Literal["data", "avatar"] = "data"
  """Per-timestep FLAME parameters to start from: the editing sequence's tracking (METHOD §5.2, the
  original) or the avatar's fine-tuned ones."""
  # --- losses (METHOD §5.3) ---
  lambda_l1: float = 10.0
  """Weight of L1 to the 2D edit."""
  lambda_lpips: float = 10.0
  """Weight of LPIPS-VGG to the 2D edit (skipped, with a warning, without --lpips-weights)."""
  lpips_weights: Path | None = None
  """LPIPS-VGG weights folder (see gaedit_jax.nets.lpips.load_lpips)."""
  lpips_input: Literal["unit", "signed"] = "unit"
  """Images go into LPIPS in [0, 1] as the original does ("unit"), or rescaled to [-1, 1], the
  range LPIPS was trained for ("signed")."""
  lpips_dtype: Literal["float32", "bfloat16"] = "float32"
  """Compute dtype of LPIPS-VGG's convolutions: float32 as the original, or bfloat16 (faster on a
  GPU; the loss differs at the 1e-3 level, README table of differences)."""
  lambda_mouth: float = MOUTH_LOSS_WEIGHT
  """Mouth preservation: weight of L1 and of D-SSIM to the photo inside the mouth mask (0: off)."""
  reg: Regularisers = GA_REGULARISERS
  """Position / scale regularisers of the visible Gaussians (METHOD §2.5)."""
  # --- WABE (METHOD §6) ---
  wabe: Literal["binary", "soft", "backward", "off"] = "binary"
  """Gradient mask: binary (--use_grad_mask), soft weights, the backward-weighted rasterizer, or off."""
  wabe_k: int = 10
  """First K contributors per pixel."""
  wabe_beta: float = 6.0
  """Soft WABE weight exp(-beta (1 - T))."""
  # --- GAN (METHOD §7) ---
  gan: bool = True
  """Conditional adversarial loss (--use_gan)."""
  gan_mode: Literal["faithful", "standard"] = "faithful"
  """faithful: one joint gradient through D and the render (original); standard: alternating, detached."""
  gan_weight: float = D.GAN_WEIGHT
  """Weight of L_D and of L_G."""
  gan_start: int = 0
  """First edit iteration (0-based) with the GAN on (original: 0; intended: 5/6 of the run)."""
  disc_lr: float = D.DISC_LR
  """Discriminator learning rate (METHOD §5.5)."""
  # --- learning rates (METHOD §5.5: GA's, xyz at its final value) ---
  position_lr: float = GA_POSITION.final
  """Local xyz learning rate (times the camera extent), constant."""
  lr: LearningRates = GA_RATES
  """Per-group learning rates (METHOD §2.6, 5.5; the original fine-tunes FLAME while editing)."""
  raster: RasterSettings = RASTER
  """Rasterizer settings."""
  wabe_visibility: Literal["pixel", "tile"] = "pixel"
  """WABE visible set: each pixel's first K contributors (the paper) or each tile's first K (the
  density of the released per-tile buffer, deterministic); METHOD 4."""
  # --- bookkeeping ---
  run: RunSettings = RunSettings(checkpoint_interval=500, keep_checkpoints=2, log_interval=10)
  """Checkpoints, --resume / --overwrite, logging (checkpoints every 500 iterations, as the original)."""
  dump_interval: int = 50
  """Side-by-side image (render | 2D edit | current avatar) every N iterations (0: never)."""
  # --- further options of the original's edit script (GAE:train.py) ---
  mouth_masks: Path | None = None
  """Mouth-preservation masks from files instead of rendering them: a folder with one mask per
  image, named as the image (.png, 255 = mouth; or .pth / .pt tensors as LangSAM's output the
  original reads), or the original's <ID>_<SEQ>_mouth_mask.pth (see edit.mouth.MouthMasks)."""
  ssim_last: float = 0.0
  """The original's --use_in2nssim: 10 (1 - SSIM) to the 2D edit replaces LPIPS in this last
  fraction of the run (0.1: intended last 10%; 1.0: what the released code does with the flag;
  0: off, as the README commands run it)."""
  lambda_ssim: float = SSIM_WEIGHT
  """Weight of the D-SSIM term of --ssim-last (original: 10, LPIPS's weight)."""
  eval: bool = True
  """Hold out the val / test splits (the original's --eval, passed by its README commands);
  --no-eval trains on train + val + test, as GaussianAvatars' Scene does without --eval."""
  eval_every: int = 500
  """Every N iterations and at the last one: metrics on the held-out splits
  (OUT/eval/iteration_N.json), point_cloud/iteration_N and a checkpoint (original: --interval 500;
  0: off)."""
  eval_max_frames: int | None = None
  """Evaluate at most this many frames per split (evenly spaced; None = all, as the original)."""
  # --- editors and regions ---
  edited: Path | None = None
  """--editor frames: folder of edited frames (the PNGs of `gaedit export-frames`, same names; a
  missing file = that view is not edited) with its manifest.json."""
  frames_manifest: Path | None = None
  """--editor frames: the manifest, when it is not in --edited."""
  edit_command: str | None = None
  """--editor command: the program, e.g. "python my_edit.py {input} {output} --photos {photos}"
  (placeholders {input} {output} {photos} {manifest} {iteration}); run every --edit-every iterations
  on --edit-command-batch current renders; it writes {output}/<same file name>."""
  edit_command_batch: int = 8
  """--editor command: views rendered and edited per call."""
  edit_command_timeout: float = 600.0
  """--editor command: seconds before a call counts as failed."""
  edit_command_shell: bool = False
  """--editor command: run the template through /bin/sh (pipes, redirections); paths are quoted."""
  edit_async: bool = False
  """--editor command: run the next call in a background thread while training on the last edits."""
  strict: bool = False
  """--editor command: a failing call stops the run (exit status 2) instead of keeping the last good edits."""
  edited_share: float = 0.5
  """--editor frames / command: share of iterations that train on a view with an edited image (the
  others draw from all training views, held to the original by the keep term); 0: all views alike.
  With a few edited frames among hundreds of views, uniform sampling would visit each edit a few
  times in a whole run."""
  lambda_keep: float = 10.0
  """Keep term: weight of L1 to the unedited avatar's render where the edit does not apply (outside
  --region, views without an edited frame); unused when the edit covers everything (the default)."""
  region: str | None = None
  """Edit only FLAME regions, e.g. "face" or "lips,nose" (face, hair, scalp, lips, eyes, nose,
  ears, neck, teeth, or any region name of the model; see --list-regions): only Gaussians bound to
  their faces change; the edit losses apply inside the region's rendered mask, the keep term outside."""
  region_feather: float = 2.0
  """Soft border of the region's image mask (pixels)."""
  region_ring: int = 1
  """Soft border in the mesh: one-ring bands of faces around the region whose Gaussians also move
  (with update weight 1 - d / (N + 1) on band d)."""
  list_regions: bool = False
  """Print the regions --region accepts on the avatar's FLAME model and exit."""

  def __post_init__(self):
    config_checks(self.validate_flags)

  def validate_flags(self) -> None:
    """Value checks of the flags (one-line InputError naming the flag)."""
    check_flags(
      self,
      {
        "edit_every batch_size devices diffusion_steps wabe_k": "int >= 1",
        "iterations seed gan_start dump_interval": "int >= 0",
        "ip2p_size": "int >= 8",
        "position_lr": "> 0",
        "edited_share": "[0, 1]",
        "guidance_scale image_guidance_scale synthetic_noise lambda_l1 lambda_lpips lambda_mouth wabe_beta "
        "gan_weight disc_lr": ">= 0",
      },
    )
    if self.ip2p_size % 8:
      raise InputError(f"--ip2p-size must be a multiple of 8 (the VAE's downsampling), got {self.ip2p_size}")
    for name, choices in (
      ("editor", ("ip2p", "synthetic", "frames", "command")),
      ("ip2p_dtype", ("float32", "bfloat16")),
      ("ip2p_attention", ("cudnn", "xla")),
      ("lpips_dtype", ("float32", "bfloat16")),
      ("flame_init", ("data", "avatar")),
      ("wabe", ("binary", "soft", "backward", "off")),
      ("gan_mode", ("faithful", "standard")),
    ):
      check_choice(self, name, choices)
    if self.intrinsics is not None:
      check_choice(self, "intrinsics", ("file", "fov_x"))
    X.check_flags(self)

  def position_schedule(self) -> PositionSchedule:
    """METHOD §5.5: the xyz rate constant (init = final = --position-lr)."""
    return PositionSchedule(self.position_lr, self.position_lr, 1)

  def check_inputs(
    self, data: Path, *, intrinsics: str = "file", flame_timesteps: int | None = None, progress: bool | None = None
  ):
    """Up-front checks (before any step): the editing sequence `data` (every split, image, mask and
    FLAME file, `validate_dataset`; its timesteps within the `flame_timesteps` FLAME parameter
    sets), the given weight folders and the synthetic editor's target dataset. Returns the
    DatasetSummary of `data`."""
    progress = self.run.progress if progress is None else progress
    if self.lpips_weights is not None and self.lambda_lpips > 0:
      check_path(self.lpips_weights, "--lpips-weights")
    if self.editor == "ip2p" and self.ip2p is not None:
      check_path(self.ip2p, "--ip2p", kind="dir")
    summary = validate_dataset(
      data,
      ("train", "val", "test"),
      intrinsics=intrinsics,
      progress=progress,
      flame_timesteps=flame_timesteps,
      flag="--data" if self.data else "the avatar's data",
    )
    n = summary.frames["train"]
    if self.batch_size > n:
      raise DatasetError(f"--batch-size {self.batch_size} is larger than the {n} training frames of {data}")
    if self.editor == "synthetic" and self.target_data is not None:
      target = validate_dataset(
        self.target_data, ("all",), required=("all",), intrinsics=intrinsics, progress=progress, flag="--target-data"
      )
      if target.image_size["all"] != summary.image_size["train"]:
        raise DatasetError(
          "--target-data {} has {}x{} images but the editing sequence {} has {}x{} (make the "
          "target with `gaedit synth` with the same --width / --height)".format(
            self.target_data, *target.image_size["all"], data, *summary.image_size["train"]
          )
        )
    return summary


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EditState:
  """avatar, per-timestep FLAME [T,...], the avatar/FLAME Adam state, discriminator params and
  Adam state, step (iterations done), PRNG key data."""

  avatar: Avatar
  flame: FlameMotion
  opt_state: Any
  disc: Any
  disc_opt_state: Any
  step: jax.Array
  key: jax.Array


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """Static settings of the jitted edit step (hashable)."""

  render: RenderConfig
  wabe: str = "binary"
  lambda_l1: float = 10.0
  lambda_lpips: float = 0.0
  lpips_input: str = "unit"
  lpips_dtype: str = "float32"
  lambda_mouth: float = MOUTH_LOSS_WEIGHT
  reg: Regularisers = GA_REGULARISERS
  gan: bool = True
  gan_mode: str = "faithful"
  gan_weight: float = D.GAN_WEIGHT
  gan_start: int = 0
  ssim_start: int | None = None  # first 0-based step of the SSIM phase (edit.schedule); None: off
  lambda_ssim: float = SSIM_WEIGHT
  keep: R.KeepSettings = R.KeepSettings()  # regions / partially edited views (edit.regions)


def make_optimizer(cfg: EditConfig, extent: float) -> optax.GradientTransformation:
  """METHOD §5.5: GaussianAvatars' per-group Adam (eps 1e-15), xyz constant at its final rate."""
  return opt_lib.make_optimizer(cfg.lr, cfg.position_schedule(), extent)


def edit_step(
  state: EditState,
  photo,
  camera,
  timestep,
  camera_index,
  cached_edit,
  model,
  background,
  mouth,
  editor,
  lpips_params,
  mouth_mask=None,
  keep_inputs=None,
  *,
  optimizer,
  disc_module,
  disc_optimizer,
  s: StepSettings,
  do_edit: bool,
):
  """One edit iteration on B views (photo [B,H,W,3], camera [B], timestep / camera_index [B]).
  Pure. `cached_edit`: the views' previous edits (used when do_edit is False, the edit-rate
  option); `mouth` bool [C]: mouth Gaussians (excluded from WABE, METHOD §6); `mouth_mask`
  [B,H,W]: the views' mouth masks read from files (None: rendered); `keep_inputs`: the unedited
  avatar and the region (edit.regions.KeepInputs; None when the edit covers everything). Returns
  (new state, metrics, images: render / edit / mouth mask of the step)."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
  k_edit, _ = jax.random.split(key)
  av0 = state.avatar

  def posed(p):
    return pose(av0.with_params(p["gauss"]), model, p["flame"], timestep)

  def render_fn(p):
    out = rasterize(posed(p), camera, background, s.render)
    return out.image, out

  params = {"gauss": av0.params(), "flame": state.flame}
  image, vjp_fn, out = jax.vjp(render_fn, params, has_aux=True)
  # 2D edit of the detached render, conditioned on the photo (METHOD §5.3 / 5.4)
  ctx = EditContext(camera_index.astype(jnp.int32), timestep.astype(jnp.int32), state.step)
  if do_edit:
    target = jax.lax.stop_gradient(editor(k_edit, jax.lax.stop_gradient(jnp.clip(image, 0, 1)), photo, ctx))
  else:
    target = cached_edit
  sq = editor.square_size
  frame = (lambda x: to_square(x, sq)) if sq else (lambda x: x)
  kp = None  # where the edit applies (--region, partially edited frames) and the keep term
  if s.keep.active:
    kp = R.keep_parts(
      keep_inputs,
      s.keep,
      editor,
      ctx,
      posed(params),
      lambda a, f: pose(a, model, f, timestep),
      camera,
      background,
      s.render,
    )
    target = jax.lax.stop_gradient(kp.composite(target, frame))
  mmask = (
    (
      render_mouth_mask(jax.lax.stop_gradient(posed(params)), mouth, camera, s.render)
      if mouth_mask is None
      else jnp.asarray(mouth_mask, jnp.float32)
    )
    if s.lambda_mouth > 0
    else jnp.zeros(image.shape[:-1], jnp.float32)
  )
  gan_on = (state.step >= s.gan_start).astype(jnp.float32)

  # D half of the alternating (standard) mode: update D on the detached render first
  disc, disc_opt = state.disc, state.disc_opt_state
  l_d_std = jnp.zeros(())
  if s.gan and s.gan_mode == "standard":
    new_d, new_opt, l_d_std = D.discriminator_step(
      disc_module, disc_optimizer, disc, disc_opt, target, frame(jax.lax.stop_gradient(image)), weight=s.gan_weight
    )
    keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(gan_on > 0, x, y), a, b)
    disc, disc_opt = keep(new_d, disc), keep(new_opt, disc_opt)

  phase = ssim_phase(state.step, s.ssim_start)  # --ssim-last: D-SSIM to the edit replaces LPIPS

  def image_loss(img, dparams):
    x = frame(img)
    parts = {"l1": jnp.mean(jnp.abs(x - target)) if kp is None else kp.edit_l1(x, target, frame)}
    loss = s.lambda_l1 * parts["l1"]
    if kp is not None:
      lk, kparts = kp.keep_loss(img, s.keep.lambda_keep)
      loss, parts = loss + lk, {**parts, **kparts}
    if s.lambda_lpips > 0:
      lp = lpips_images(lpips_params, x, target, s.lpips_input, jnp.dtype(s.lpips_dtype))
      parts["lpips"] = jnp.mean(lp) if kp is None else kp.view_mean(lp)
      loss = loss + (1.0 - phase) * s.lambda_lpips * parts["lpips"]
    if s.ssim_start is not None:
      parts["edit_dssim"], parts["ssim_phase"] = edit_dssim(x, target), phase
      loss = loss + phase * s.lambda_ssim * parts["edit_dssim"]
    if s.lambda_mouth > 0:
      lm, mp = mouth_loss(img, photo, mmask, s.lambda_mouth)
      loss, parts = loss + lm, {**parts, **mp}
    if s.gan:
      if s.gan_mode == "faithful":
        lg, gp = D.adversarial_loss(disc_module, dparams, target, x, mode="faithful", weight=s.gan_weight)
      else:
        lg = D.generator_loss(disc_module, dparams, target, x, weight=s.gan_weight)
        gp = {"gan_g": lg / s.gan_weight, "gan_d": l_d_std / s.gan_weight}
      loss, parts = loss + gan_on * (lg if kp is None else kp.gan_scale * lg), {**parts, **gp}
    return loss, parts

  (l_img, parts), (g_img, g_disc) = jax.value_and_grad(image_loss, argnums=(0, 1), has_aux=True)(image, disc)
  (g_params,) = vjp_fn(g_img)

  # GA regularisers on the visible Gaussians (METHOD §2.5), local units
  visible = jnp.any(out.radii.reshape(-1, av0.capacity) > 0, axis=0) & av0.active

  def reg(g):
    r = s.reg
    return r.lambda_xyz * position_reg(g["xyz"], visible, r.threshold_xyz) + r.lambda_scale * scale_reg(
      g["log_scale"], visible, r.threshold_scale
    )

  l_reg, g_reg = jax.value_and_grad(reg)(params["gauss"])
  grads = {"gauss": jax.tree.map(jnp.add, g_params["gauss"], g_reg), "flame": g_params["flame"]}
  # WABE (METHOD §6): mask the total gradient of xyz / SH / opacity / scale before Adam
  grads["gauss"], gmask = W.mask_gradients(grads["gauss"], out, mouth, s.wabe)
  grads["gauss"] = jax.tree.map(
    lambda g: jnp.where(av0.active.reshape((-1,) + (1,) * (g.ndim - 1)), g, 0.0), grads["gauss"]
  )
  region = None if keep_inputs is None else keep_inputs.region
  if region is not None:  # --region: Gaussians outside get no gradient and no update (bit-identical)
    grads["gauss"] = R.mask_region_gradient(grads["gauss"], region)
  updates, opt_state = optimizer.update(grads, state.opt_state, params)
  old_gauss = params["gauss"]
  params = optax.apply_updates(params, updates)
  if region is not None:
    params["gauss"] = R.restrict_update(old_gauss, params["gauss"], region)
  if s.gan and s.gan_mode == "faithful":
    d_up, d_opt = disc_optimizer.update(g_disc, disc_opt, disc)
    disc = jax.tree.map(lambda x, y: jnp.where(gan_on > 0, x, y), optax.apply_updates(disc, d_up), disc)
    disc_opt = jax.tree.map(lambda x, y: jnp.where(gan_on > 0, x, y), d_opt, disc_opt)
  new = EditState(
    avatar=av0.with_params(params["gauss"]),
    flame=params["flame"],
    opt_state=opt_state,
    disc=disc,
    disc_opt_state=disc_opt,
    step=state.step + 1,
    key=state.key,
  )
  # an overflowing intersection buffer means an incomplete image: skip (the loop enlarges it)
  ovf = jnp.any(out.overflow)
  new = jax.tree.map(lambda a, b: jnp.where(ovf, a, b), dataclasses.replace(state, step=state.step + 1), new)
  metrics = dict(
    loss=l_img + l_reg,
    reg=l_reg,
    overflow=ovf,
    isect_need=jnp.max(out.intersections).astype(jnp.float32) / av0.capacity,
    wabe_fraction=jnp.sum(gmask * av0.active) / jnp.maximum(jnp.sum(av0.active), 1),
    **parts,
  )
  return new, metrics, dict(render=image, edit=target, mouth_mask=mmask, wabe_mask=gmask)


def init_edit_state(seed: int, avatar: Avatar, flame: FlameMotion, optimizer, disc_module, disc_optimizer) -> EditState:
  """Fresh edit state: copies of the avatar and per-timestep FLAME (the step donates its state),
  new Adam moments (METHOD §5.5), a discriminator initialised from `seed`."""
  k_disc, k_run = jax.random.split(jax.random.key(seed))
  _, dparams = D.init_discriminator(k_disc, (64, 64), disc_module)
  fl = jax.tree.map(lambda v: jnp.array(v, jnp.float32, copy=True), flame)
  av = jax.tree.map(lambda x: jnp.array(x, copy=True), avatar)
  params = {"gauss": av.params(), "flame": fl}
  return EditState(
    avatar=av,
    flame=fl,
    opt_state=optimizer.init(params),
    disc=dparams,
    disc_opt_state=disc_optimizer.init(dparams),
    step=jnp.zeros((), jnp.int32),
    key=jax.random.key_data(k_run),
  )


def make_step(optimizer, disc_module, disc_optimizer, s: StepSettings, do_edit: bool):
  return jax.jit(
    lambda st, *a: edit_step(
      st, *a, optimizer=optimizer, disc_module=disc_module, disc_optimizer=disc_optimizer, s=s, do_edit=do_edit
    ),
    donate_argnums=(0,),
  )


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


def build_editor(cfg: EditConfig, image_scale: float, white_background: bool):
  if cfg.editor == "synthetic":
    if cfg.target_data is None:
      raise InputError("--editor synthetic needs --target-data DIR (gaedit synth DIR --texture facepaint)")
    return SyntheticEditor.from_dataset(
      cfg.target_data,
      NoiseConfig(strength=cfg.synthetic_noise),
      image_scale=image_scale,
      white_background=white_background,
    )
  if cfg.editor == "ip2p":
    from gaedit_jax.nets.ip2p import InstructPix2Pix, IP2PConfig  # imports diffusers

    if cfg.ip2p is None or not cfg.prompt:
      raise InputError("--editor ip2p needs --ip2p DIR (InstructPix2Pix weights) and --prompt TEXT")
    ic = IP2PConfig(
      guidance_scale=cfg.guidance_scale,
      image_guidance_scale=cfg.image_guidance_scale,
      num_steps=cfg.diffusion_steps,
      size=cfg.ip2p_size,
      dtype=cfg.ip2p_dtype,
      attention=cfg.ip2p_attention,
    )
    return IP2PEditor.create(
      InstructPix2Pix.from_pretrained(cfg.ip2p, ic), cfg.prompt, negative_prompt=cfg.negative_prompt
    )
  raise InputError(f"unknown editor {cfg.editor!r}")


class EditRun:
  """Loads the avatar, the data and the editor; `run()` edits for cfg.iterations."""

  def __init__(self, cfg: EditConfig, editor=None):
    self.cfg = cfg
    self.out = Path(cfg.out).absolute()  # created, locked and checked by run()
    avatar, model, flame, fp, acfg, it_dir = load_trained(
      cfg.avatar, data=cfg.data, flame_model=cfg.flame_model, require_data=True
    )
    c = acfg["config"]
    self.avatar_cfg = acfg
    self.image_scale = float(c.get("image_scale", 1.0))
    self.white_background = bool(c.get("white_background", True))
    self.data = Path(cfg.data or acfg["data"]).absolute()
    self.intrinsics = cfg.intrinsics or c.get("intrinsics", "file")
    self.flame_model = Path(acfg["flame_model"])
    dkw = dict(image_scale=self.image_scale, white_background=self.white_background, intrinsics=self.intrinsics)
    self.train_ds = training_frames(self.data, cfg.eval, cache_size=4096, **dkw)  # --eval / --no-eval
    if cfg.flame_init == "data":  # METHOD §5.2: FLAME from the editing sequence's tracking
      full = load_model(self.data, self.flame_model)
      fp = fit_flame_dims(full, self.train_ds.flame_params)
      check_consistency(self.train_ds, full, fp)
      model = baked_model(full, fp)
      flame = fp.motion.astype(jnp.float32)
    self.flame0, self.model = fp, model
    cfg.check_inputs(
      self.data,
      intrinsics=self.intrinsics,
      flame_timesteps=flame.num_timesteps,
      progress=cfg.run.progress and parallel.is_primary(),
    )  # bad input fails here, not at step N
    self.extent = self.train_ds.camera_extent()
    self.background = jnp.asarray(self.train_ds.background)
    self.sh_degree = avatar.sh_degree
    self.external = None  # --editor command: the host side (edit.external.CommandEditor)
    if editor is None and cfg.editor in ("frames", "command"):
      editor, self.external = X.build_editor(cfg, self.train_ds, self.out)
    self.editor = editor if editor is not None else build_editor(cfg, self.image_scale, self.white_background)
    if hasattr(self.editor, "covers"):  # synthetic editor: every training view needs a target
      ctx = EditContext.make(self.train_ds.camera_indices, self.train_ds.timesteps)
      missing = ~np.asarray(self.editor.covers(ctx))
      if missing.any():
        raise InputError(
          f"{cfg.target_data} has no edited image for {int(missing.sum())} training "
          f"views of {self.data} (make it with `gaedit synth` with the same seed and sizes)"
        )
    self.lpips_params = None
    lam_lpips = cfg.lambda_lpips
    if lam_lpips > 0:
      if cfg.lpips_weights is None:
        warnings.warn(
          "gaedit edit: no --lpips-weights: the LPIPS term (weight 10, METHOD §5.3) is skipped", stacklevel=2
        )
        lam_lpips = 0.0
      else:
        self.lpips_params = load_lpips(cfg.lpips_weights)
    self.optimizer = make_optimizer(cfg, self.extent)
    self.disc_module = D.PatchDiscriminator()
    self.disc_optimizer = D.make_discriminator_optimizer(cfg.disc_lr)
    self.capacity_ctl = IsectCapacity(cfg.raster.isect_per_gaussian, cfg.raster.adapt_isect)
    self.mesh = parallel.view_mesh(cfg.devices, cfg.batch_size, what="gaedit edit")
    self.settings = StepSettings(
      render=self.render_config(),
      wabe=cfg.wabe,
      lambda_l1=cfg.lambda_l1,
      lambda_lpips=lam_lpips,
      lpips_input=cfg.lpips_input,
      lpips_dtype=cfg.lpips_dtype,
      lambda_mouth=cfg.lambda_mouth,
      reg=cfg.reg,
      gan=cfg.gan,
      gan_mode=cfg.gan_mode,
      gan_weight=cfg.gan_weight,
      gan_start=cfg.gan_start,
    )
    self.settings = dataclasses.replace(
      self.settings, ssim_start=ssim_phase_start(cfg.iterations, cfg.ssim_last), lambda_ssim=cfg.lambda_ssim
    )
    self.mouth = mouth_gaussians(avatar.binding, mouth_face_mask(self.model, source=self.flame_model), avatar.active)
    # checked here, before the first step: every training frame has its mask
    self.mouth_masks = MouthMasks(cfg.mouth_masks, self.train_ds) if cfg.mouth_masks is not None else None
    self.eval_ds = held_out_frames(self.data, cfg.eval, cache_size=0, **dkw)
    self.eval_targets = edit_targets(self.editor, cfg.target_data, self.eval_ds, cache_size=0, **dkw)
    self.state = self.init_state(avatar, flame)
    # --region / partially edited frames: the keep term's inputs (edit.regions)
    self.settings, self.keep_inputs = R.keep_setup(cfg, self.settings, self.editor, self.model, avatar, flame)
    # data parallel over views: the state, the model and the editor's weights on every device
    self.model_local = self.model
    self.model, self.background, self.mouth, self.editor, self.lpips_params, self.state = parallel.replicate(
      (self.model, self.background, self.mouth, self.editor, self.lpips_params, self.state), self.mesh
    )
    self.keep_inputs = parallel.replicate(self.keep_inputs, self.mesh)
    self.cache: dict[int, jax.Array] = {}
    self.history: list[dict] = []

  @property
  def isect(self) -> float:
    """The rasterizer's intersection capacity per Gaussian slot now (train.loop.IsectCapacity)."""
    return self.capacity_ctl.value

  def render_config(self) -> RenderConfig:
    return W.render_config(
      self.cfg.wabe,
      RenderConfig(
        sh_degree=self.sh_degree,
        wabe_k=self.cfg.wabe_k,
        wabe_beta=self.cfg.wabe_beta,
        isect_per_gaussian=self.isect,
        mesh=self.mesh,
        tile_size=self.cfg.raster.tile_size,
        wabe_visibility=self.cfg.wabe_visibility,
        alpha_clamp_grad=self.cfg.raster.alpha_clamp_grad,
      ),
    )

  def init_state(self, avatar: Avatar, flame: FlameMotion) -> EditState:
    return init_edit_state(self.cfg.seed, avatar, flame, self.optimizer, self.disc_module, self.disc_optimizer)

  def step_fn(self, do_edit: bool):
    # The editor is an argument of the step, not part of it.
    c = self.cfg
    return cached_step(
      ("edit", c.lr, c.position_schedule(), c.disc_lr, self.extent, self.settings, do_edit),
      lambda: make_step(self.optimizer, self.disc_module, self.disc_optimizer, self.settings, do_edit),
    )

  def views(self, idx) -> tuple:
    """The step's inputs of training views `idx` on the devices: (image, camera, timestep,
    camera_index, mouth masks or None), split over the mesh (the loop's prefetch thread makes them)."""
    b = self.train_ds.batch(idx)
    views = parallel.shard_views((b.image, b.camera, b.timestep, b.camera_index), self.mesh)
    return (*views, self.mouth_batch(idx))

  def step(self, state: EditState, idx, *, do_edit: bool = True, cached=None, views=None):
    """One edit step on training views `idx` from `state`: (new state, metrics, images). The loop's
    step; `cached` (the views' previous 2D edits) is used when not do_edit; `views`: `self.views(idx)`
    when already made."""
    *v, mouth = self.views(idx) if views is None else views
    if cached is None:
      cached = parallel.shard_views(jnp.zeros(self.edit_shape(len(idx)), jnp.float32), self.mesh)
    return self.step_fn(do_edit)(
      state, *v, cached, self.model, self.background, self.mouth, self.editor, self.lpips_params,
      mouth, self.keep_inputs,
    )  # fmt: skip

  def edit_shape(self, b: int) -> tuple[int, ...]:
    sq = self.editor.square_size
    h, w = self.train_ds.image_size
    return (b, sq, sq, 3) if sq else (b, h, w, 3)

  def mouth_batch(self, idx):
    """The views' mouth masks from --mouth-masks (split over the devices as the views), or None."""
    if self.mouth_masks is None:
      return None
    return parallel.shard_views(jnp.asarray(self.mouth_masks.batch(idx)), self.mesh)

  def edited_frames(self) -> np.ndarray | None:
    """Training frames that have an edited image (--editor frames / command), else None."""
    if not hasattr(self.editor, "edited"):
      return None
    ds = self.train_ds
    return np.flatnonzero(np.asarray(self.editor.edited(EditContext.make(ds.camera_indices, ds.timesteps))))

  def render_frames(self, idx) -> np.ndarray:
    """Current renders [n,H,W,3] of training frames `idx` (--editor command's input)."""
    b = self.train_ds.batch(idx)
    st = parallel.local(self.state)
    rc = dataclasses.replace(self.settings.render, wabe_k=0, wabe_backward=False, mesh=None)
    return render_views(
      st.avatar, self.model_local, st.flame, np.asarray(b.timestep), b.camera, parallel.local(self.background), rc
    )

  # -- checkpoints / export ---------------------------------------------------------------------
  def meta(self) -> dict:
    return dict(isect_per_gaussian=self.isect, config=jsonable(dataclasses.asdict(self.cfg)), history=self.history)

  def inputs(self) -> dict:
    """The input folders --out must stay clear of (flag -> folder)."""
    return {
      "--avatar": self.cfg.avatar,
      "--data": self.data,
      "--target-data": self.cfg.target_data,
      "--edited": self.cfg.edited,
    }

  def resume_identity(self) -> dict:
    """What a checkpoint must share with this edit to be resumed (flag -> value)."""
    c = self.cfg
    src = find_model(c.avatar)  # the avatar the edit starts from: a checkpoint file or an iteration folder
    start = src.path if src.path.is_file() else src.path / "point_cloud.ply"
    return {
      "--avatar": file_id(start),
      "--data": file_id(self.data, "transforms_train.json"),
      "--editor": c.editor,
      "--prompt": c.prompt,
      "--flame-init": c.flame_init,
      "--seed": c.seed,
      "--target-data": None if c.target_data is None else file_id(c.target_data, "transforms_train.json"),
      **X.resume_identity(c),
    }

  def export(self, it: int) -> Path:
    """Reconstruction model-folder format (METHOD §2.9), as `Trainer.export` writes it."""
    d = self.out / "point_cloud" / f"iteration_{it}"
    d.mkdir(parents=True, exist_ok=True)
    save_avatar_ply(d / "point_cloud.ply", self.state.avatar, sh_degree=self.sh_degree)
    save_flame_npz(d / "flame_param.npz", self.flame0, self.state.flame)
    return d

  def write_cfg(self) -> None:
    config = dict(self.avatar_cfg.get("config", {}))
    config.update(
      image_scale=self.image_scale,
      white_background=self.white_background,
      intrinsics=self.intrinsics,
      sh_degree=self.sh_degree,
      edit=jsonable(dataclasses.asdict(self.cfg)),
    )
    write_json(
      self.out / "cfg.json",
      dict(
        config=config,
        data=str(self.data),
        flame_model=str(self.flame_model.absolute()),
        extent=self.extent,
        edited_from=str(Path(self.cfg.avatar).absolute()),
      ),
    )

  def dump(self, it: int, imgs: dict, b) -> None:
    """OUT/edits/iteration_<it>.png: render | 2D edit | current avatar (the same view, after the step)."""
    h, w = self.train_ds.image_size
    e = parallel.first_view(imgs["edit"])[None]
    e = from_square(e, h, w) if self.editor.square_size else e
    st = parallel.local(self.state)  # this process's copy (multi-host safe)
    cur = render_views(
      st.avatar,
      self.model_local,
      st.flame,
      np.asarray(b.timestep[:1]),
      b.camera[:1],
      parallel.local(self.background),
      dataclasses.replace(self.settings.render, wabe_k=0, wabe_backward=False, mesh=None),
    )
    row = [np.clip(parallel.first_view(imgs["render"]), 0, 1), np.clip(np.asarray(e[0]), 0, 1), cur[0]]
    save_png(self.out / "edits" / f"iteration_{it:05d}.png", side_by_side(row))

  # -- the loop ---------------------------------------------------------------------------------
  def run(self) -> dict:
    c = self.cfg
    with Session.from_flags(c, what="gaedit edit", inputs=self.inputs(), identity=self.resume_identity()) as ses:
      try:
        return self._run(ses)
      finally:
        if self.external is not None:
          self.external.abort()  # a failed run: do not wait for a background command

  def _run(self, ses: Session) -> dict:
    c = self.cfg
    primary = ses.primary  # multi-host: process 0 writes logs, dumps, exports, summaries
    compiles = CompileCounter.snapshot()
    got = ses.restore(lambda meta: self.state)
    if got is not None:
      state, meta = got
      self.capacity_ctl.value = float(meta.get("isect_per_gaussian", self.isect))
      self.settings = dataclasses.replace(self.settings, render=self.render_config())
      self.state = parallel.replicate(state, self.mesh)
      self.history = list(meta.get("history", []))
    start = int(self.state.step)
    if primary:
      self.write_cfg()
    writer, bar = ses.begin(total=c.iterations, desc="edit", tensorboard=c.run.tensorboard, progress=c.run.progress)
    end = c.iterations if c.run.stop_after is None else min(c.iterations, c.run.stop_after)
    n = len(self.train_ds)
    zero_edit = parallel.shard_views(jnp.zeros(self.edit_shape(c.batch_size), jnp.float32), self.mesh)
    pending: list = []
    favoured = self.edited_frames()  # read once; again when the command editor brings new edits

    def make_views(it: int):  # in the prefetch thread: a pure function of `it`
      idx = mixed_frame_order(n, c.batch_size, c.seed, it, favoured, c.edited_share)
      return idx, self.views(idx)

    # the command editor changes `favoured` between steps: its batches are made in the loop
    depth = 0 if self.external is not None else c.run.prefetch
    with (
      ses.guard(lambda: self.state, self.meta),  # a failure checkpoints the last completed step
      Prefetcher(make_views, start + 1, end, depth) as batches,
    ):
      for it in range(start + 1, end + 1):
        idx, views = batches.get(it)
        keyi = tuple(int(i) for i in idx)
        do_edit = c.edit_every <= 1 or (it - 1) % c.edit_every == 0 or keyi not in self.cache
        if hasattr(self.editor, "edited"):  # frames / command: a table lookup, refreshed on the host
          do_edit = True
          if self.external is not None and self.external.update(it, self.render_frames):
            self.editor = parallel.replicate(self.external.editor(), self.mesh)
            favoured = self.edited_frames()
        cached = zero_edit if do_edit else self.cache[keyi]
        ses.begin_step()  # a Ctrl-C now waits for ses.done(it): the step consumes the state
        self.state, m, imgs = self.step(self.state, idx, do_edit=do_edit, cached=cached, views=views)
        ses.done(it)  # no densification while editing: the step's result is complete
        if c.edit_every > 1 and do_edit:
          self.cache[keyi] = imgs["edit"]
        pending.append((it, m))
        if it % c.run.log_interval == 0 or it == end:
          self._flush(pending, writer, bar)
          pending = []
        if c.dump_interval and (it % c.dump_interval == 0 or it == end) and primary:
          self.dump(it, imgs, self.train_ds.batch(idx))
        if ses.due(it, end):
          ses.save(self.state, self.meta())
        if eval_due(it, c.eval_every, c.iterations):
          eval_and_save(self, it, ses, writer)
    ses.wait()
    if self.external is not None:
      self.external.close()
    summary = ses.summary(int(self.state.step))  # the whole edit, every session since iteration 1
    if bar is not None:
      bar.close()
    result: dict = dict(
      iterations=summary["iterations"],
      edit_seconds=summary["seconds"],
      sessions=summary["sessions"],
      resumed_at=summary["resumed_at"],
    )
    comp = CompileCounter.since(compiles)  # the edit step, its evaluation renders, small programs
    result["compilations"] = dict(count=comp["count"], seconds=round(comp["seconds"], 2), cache_hits=comp["cache_hits"])
    if self.external is not None:
      result["edit_command"] = self.external.summary()
    if int(self.state.step) >= c.iterations and primary:
      result["export"] = str(self.export(c.iterations))
    if primary:
      write_json(self.out / "edit_summary.json", jsonable(dict(result, history=self.history)))
    return result

  def _flush(self, pending, writer, bar) -> None:
    flushed = flush_metrics(
      pending,
      writer,
      bar,
      self.history,
      tag="edit",
      scalars=None,
      postfix=lambda m: dict(loss=f"{m['loss']:.4f}", l1=f"{m['l1']:.4f}"),
    )
    before = self.isect
    for msg in self.capacity_ctl.update(flushed, "edit iteration"):
      print(msg)
    if self.isect != before:  # a new capacity recompiles the step
      self.settings = dataclasses.replace(self.settings, render=self.render_config())


__all__ = [
  "EditConfig",
  "EditState",
  "StepSettings",
  "edit_step",
  "init_edit_state",
  "make_step",
  "make_optimizer",
  "build_editor",
  "EditRun",
]
