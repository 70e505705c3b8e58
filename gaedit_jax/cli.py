"""The `gaedit` command: one subcommand per stage. This module only parses and dispatches.

Each subcommand is a module of `gaedit_jax.commands` with a function `main(cfg: Config)` taking one
dataclass; tyro turns its fields (with their defaults, which are the paper's) into flat flags
(`--out`, not `--cfg.out`) and `--help`, with `main`'s docstring as the description. Modules are
imported only when their subcommand runs, so `gaedit synth` does not pay for importing diffusers.

Errors a user can fix (a bad flag, file or folder: `gaedit_jax.errors.InputError`, a missing or
unreadable path) are printed as one line `gaedit STAGE: error: MESSAGE` on stderr with exit status
2; tyro's own argument errors also exit with 2. Ctrl-C prints `gaedit STAGE: interrupted` and exits
with 130. `gaedit --debug STAGE ...` (or GAEDIT_DEBUG=1) shows the traceback instead.

Compiled XLA programs are kept in JAX's persistent compilation cache, so a second run with the same
shapes and settings loads its steps instead of compiling them: the folder is GAEDIT_COMPILE_CACHE
when that is a path, else $XDG_CACHE_HOME/gaedit/jax (default ~/.cache/gaedit/jax).
`gaedit --no-compile-cache STAGE ...` or GAEDIT_COMPILE_CACHE=0 turns it off. (Only the command
line: `main(argv)` called from Python leaves JAX's settings as the caller has them.)
"""

from __future__ import annotations

import importlib
import os
import sys

from gaedit_jax.errors import InputError

# name -> (module with `main(cfg)`, one-line description)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
  "demo": ("gaedit_jax.commands.demo", "the whole pipeline on the built-in synthetic head"),
  "synth": ("gaedit_jax.commands.synth", "write the synthetic multi-view video dataset"),
  "render-scene": ("gaedit_jax.commands.render_scene", "render a built-in scene of Gaussians to a PNG"),
  "reconstruct": ("gaedit_jax.commands.reconstruct", "train a GaussianAvatars avatar from a dataset"),
  "render": ("gaedit_jax.commands.render", "novel views / self- / cross-identity reenactment"),
  "eval": ("gaedit_jax.commands.eval", "PSNR / SSIM / LPIPS / CLIP metrics"),
  "view": ("gaedit_jax.commands.view", "interactive web viewer of an avatar (viser; local or over SSH)"),
  "export": (
    "gaedit_jax.commands.export",
    "write an avatar as a GaussianAvatars folder, world-space ply(s), .splat or .spz",
  ),
  "edit": ("gaedit_jax.commands.edit", "text-driven 4D edit of an avatar"),
  "export-frames": (
    "gaedit_jax.commands.export_frames",
    "write renders + manifest for any 2D editor (--editor frames)",
  ),
  "edit2d": ("gaedit_jax.commands.edit2d", "try an InstructPix2Pix edit on one image"),
  "convert-weights": ("gaedit_jax.commands.convert_weights", "convert PyTorch weights to Flax once"),
}
from gaedit_jax.flags import deferred_config_checks
from gaedit_jax.parallel import init_distributed

EXIT_USER_ERROR = 2  # as argparse / tyro for bad arguments
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
# OS errors on a path the user gave (a missing data folder, an unreadable file, an existing output)
USER_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def _usage() -> str:
  lines = ["usage: gaedit [--debug] [--no-compile-cache] SUBCOMMAND [--help] [options]", "", "subcommands:"]
  for name, (_, doc) in SUBCOMMANDS.items():
    lines.append(f"  {name:<16} {doc}")
  lines += [
    "",
    "  --debug          show the traceback of an error (also: GAEDIT_DEBUG=1)",
    "  --no-compile-cache",
    "                   do not keep compiled programs in JAX's persistent compilation cache",
    "                   (also: GAEDIT_COMPILE_CACHE=0; GAEDIT_COMPILE_CACHE=DIR picks the folder,",
    "                   default $XDG_CACHE_HOME/gaedit/jax or ~/.cache/gaedit/jax)",
  ]
  return "\n".join(lines)


_OFF = ("0", "false", "no", "off")


def _gpu_jax() -> bool:
  """Whether a GPU build of jaxlib is installed (its plugin module), without starting a backend
  (multi-host runs must initialise jax.distributed first)."""
  import importlib.util

  return any(importlib.util.find_spec(m) is not None for m in ("jax_cuda13_plugin", "jax_cuda12_plugin"))


def compile_cache_dir(environ=None, *, gpu: bool | None = None) -> str | None:
  """The persistent compilation cache's folder: GAEDIT_COMPILE_CACHE when it is a path, else
  $XDG_CACHE_HOME/gaedit/jax (~/.cache/gaedit/jax); None when GAEDIT_COMPILE_CACHE is 0 / off. By
  default only with a GPU build of JAX: on the CPU backend, writing executables that call our FFI
  kernels to the cache crashed the process (segfault in XLA's serialisation, jax 0.10.2), so there it
  is used only when GAEDIT_COMPILE_CACHE names a folder or is 1."""
  env = os.environ if environ is None else environ
  v = env.get("GAEDIT_COMPILE_CACHE", "").strip()
  if v.lower() in _OFF:
    return None
  if v and v.lower() not in ("1", "true", "yes", "on"):
    return os.path.expanduser(v)
  if not v and not (_gpu_jax() if gpu is None else gpu):
    return None
  base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "gaedit", "jax")


def enable_compile_cache(folder: str | None, environ=None) -> None:
  """Points JAX's persistent compilation cache at `folder` (None: leaves it off). Must run before
  the first compilation. Every program is stored, also the small ones JAX skips by default (under a
  second; a short run compiles a couple of hundred of them: densification, data, evaluation);
  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS still sets that threshold."""
  if folder is None:
    return
  import jax

  env = os.environ if environ is None else environ
  jax.config.update("jax_compilation_cache_dir", folder)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in env:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _load(name: str):
  module, _ = SUBCOMMANDS[name]
  try:
    mod = importlib.import_module(module)
  except ModuleNotFoundError as e:
    if e.name and e.name.startswith("gaedit_jax"):
      raise SystemExit(f"gaedit {name}: not available in this version ({e.name} is missing)") from e
    raise
  return mod.main


def error_message(e: BaseException) -> str:
  """The one-line text of a user error: an OS error as 'reason: path', else its message, with
  newlines folded (a message must stay one line)."""
  if isinstance(e, OSError) and not isinstance(e, InputError) and e.strerror and e.filename is not None:
    msg = f"{e.strerror}: {os.fsdecode(e.filename)}"
  else:
    msg = str(e) or type(e).__name__
  return " ".join(msg.split())


def _close_progress_bars() -> None:
  """Closes tqdm bars a failed stage left open, so their last line is printed before our message
  (not after it, when the interpreter exits)."""
  mod = sys.modules.get("tqdm")
  for bar in list(getattr(getattr(mod, "tqdm", None), "_instances", None) or ()):
    try:
      bar.close()
    except Exception:  # a half-built bar: nothing to print
      pass


def _debug_env() -> bool:
  return os.environ.get("GAEDIT_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def parse_config(config: type, args: list[str], *, prog: str | None = None, description: str | None = None):
  """The config dataclass `config` from command-line `args`, as every subcommand parses them: nested
  setting groups (train.config) keep flat flags (--feature-lr, not --lr.feature-lr); value checks
  run after parsing, so an InputError is our one line, not tyro's box."""
  import tyro

  with deferred_config_checks():
    return tyro.cli(config, args=args, prog=prog, description=description, config=(tyro.conf.OmitArgPrefixes,))


def run(name: str, rest: list[str]):
  """Parses `rest` for subcommand `name` and runs it; errors propagate (see `main`)."""
  import dataclasses
  import inspect
  import typing

  init_distributed()  # multi-host runs (README: several hosts); a no-op otherwise
  fn = _load(name)
  (param,) = inspect.signature(fn).parameters  # every command is `main(cfg: Config)`
  config = typing.get_type_hints(fn)[param]
  if not dataclasses.is_dataclass(config):
    raise TypeError(f"{fn.__module__}.main must take one dataclass config, not {config!r}")
  cfg = parse_config(config, rest, prog=f"gaedit {name}", description=(fn.__doc__ or SUBCOMMANDS[name][1]))
  return fn(cfg)


def main(argv: list[str] | None = None, *, handle_errors: bool | None = None):
  """`gaedit [--debug] SUBCOMMAND ...`.

  handle_errors: turn user errors into one line on stderr + exit status 2 (KeyboardInterrupt: one
  line + 130). Default: when reading sys.argv (the installed command, `python -m gaedit_jax.cli`);
  a call with an explicit argv (tests, scripts) lets the exceptions through unless asked."""
  from_command_line = argv is None  # the installed `gaedit`: sys.exit(main()) must see None -> status 0
  if handle_errors is None:
    handle_errors = from_command_line
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = _debug_env()
  compile_cache = True
  while argv and argv[0] in ("--debug", "--no-compile-cache"):
    if argv[0] == "--debug":
      debug = True
    else:
      compile_cache = False
    argv = argv[1:]
  if not argv or argv[0] in ("-h", "--help"):
    print(_usage())
    return None
  name, rest = argv[0], argv[1:]
  if name not in SUBCOMMANDS:
    print(
      f"gaedit: error: unknown subcommand {name!r} (one of: {', '.join(SUBCOMMANDS)}; see gaedit --help)",
      file=sys.stderr,
    )
    raise SystemExit(EXIT_USER_ERROR)
  if compile_cache and from_command_line:  # the `gaedit` command; a call from Python keeps its own JAX settings
    enable_compile_cache(compile_cache_dir())
  if not handle_errors or debug:
    result = run(name, rest)
    return None if from_command_line else result
  try:
    result = run(name, rest)
    return None if from_command_line else result
  except KeyboardInterrupt:
    _close_progress_bars()
    print(f"gaedit {name}: interrupted", file=sys.stderr)
    raise SystemExit(EXIT_INTERRUPTED) from None
  except (InputError, *USER_OS_ERRORS) as e:
    _close_progress_bars()
    print(f"gaedit {name}: error: {error_message(e)}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR) from None
  except SystemExit as e:
    if isinstance(e.code, str):  # SystemExit("gaedit STAGE: ..."): a user error raised by a command
      _close_progress_bars()
      msg = e.code
      for prefix in (f"gaedit {name}: ", "gaedit: "):
        if msg.startswith(prefix):
          msg = msg[len(prefix) :]
          break
      print(f"gaedit {name}: error: {' '.join(msg.split())}", file=sys.stderr)
      raise SystemExit(EXIT_USER_ERROR) from None
    raise


if __name__ == "__main__":
  main()
