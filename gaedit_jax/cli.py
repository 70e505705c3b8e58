"""The `gaedit` command: one subcommand per stage. This module only parses and dispatches.

Each subcommand is a function `main(cfg)` taking a dataclass config, or a function with annotated
keyword arguments, in the module named below; tyro turns its fields (with their defaults, which are
the paper's) into `--help`. Modules are imported only when their subcommand runs, so `gaedit synth`
does not pay for importing diffusers.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, function, one-line description)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("gaedit_jax.demo", "main", "the whole pipeline on the built-in synthetic head"),
    "synth": ("gaedit_jax.data.synthetic", "synth_main", "write the synthetic multi-view video dataset"),
    "render-scene": ("gaedit_jax.render.demo_scene", "main", "render a built-in scene of Gaussians to a PNG"),
    "reconstruct": ("gaedit_jax.reconstruct", "main", "train a GaussianAvatars avatar from a dataset"),
    "render": ("gaedit_jax.render_cli", "main", "novel views / self- / cross-identity reenactment"),
    "eval": ("gaedit_jax.evaluate", "main", "PSNR / SSIM / LPIPS / CLIP metrics"),
    "export": ("gaedit_jax.commands.export", "main", "write an avatar as a GaussianAvatars folder or a world ply"),
    "edit": ("gaedit_jax.edit.loop", "main", "text-driven 4D edit of an avatar"),
    "edit2d": ("gaedit_jax.edit.edit2d", "main", "try an InstructPix2Pix edit on one image"),
    "convert-weights": ("gaedit_jax.edit.weights", "convert_main", "convert PyTorch weights to Flax once"),
}


def _usage() -> str:
  lines = ["usage: gaedit SUBCOMMAND [--help] [options]", "", "subcommands:"]
  for name, (_, _, doc) in SUBCOMMANDS.items():
    lines.append(f"  {name:<16} {doc}")
  return "\n".join(lines)


def _load(name: str):
  module, fn, _ = SUBCOMMANDS[name]
  try:
    mod = importlib.import_module(module)
  except ModuleNotFoundError as e:
    if e.name and e.name.startswith("gaedit_jax"):
      raise SystemExit(f"gaedit {name}: not available in this version ({e.name} is missing)") from e
    raise
  return getattr(mod, fn)


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(_usage())
    return
  name, rest = argv[0], argv[1:]
  if name not in SUBCOMMANDS:
    raise SystemExit(f"gaedit: unknown subcommand {name!r}\n\n{_usage()}")
  import dataclasses
  import inspect
  import typing

  import tyro

  from gaedit_jax.parallel import init_distributed

  init_distributed()  # multi-host runs (README: several hosts); a no-op otherwise
  fn = _load(name)
  params = list(inspect.signature(fn).parameters)
  hints = typing.get_type_hints(fn)
  if len(params) == 1 and dataclasses.is_dataclass(hints.get(params[0])):
    # main(cfg: Config): flat flags (--out, not --cfg.out)
    cfg = tyro.cli(hints[params[0]], args=rest, prog=f"gaedit {name}",
                   description=(fn.__doc__ or SUBCOMMANDS[name][2]))
    fn(cfg)
  else:
    tyro.cli(fn, args=rest, prog=f"gaedit {name}")


if __name__ == "__main__":
  main()
