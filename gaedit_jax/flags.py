"""Settings as flags: the one mechanism that turns config dataclasses into flat command-line flags,
and the checks of their values.

Configs nest small frozen groups (train.config: learning rates, regularisers, raster settings, run
bookkeeping); every field name is unique across a config and its groups, so each field is one flat
flag (`--feature-lr`, `--tile-size`, `--checkpoint-interval`): the CLI asks tyro to omit the group
prefixes, and Python callers use `build(Config, feature_lr=..., tile_size=...)`, which routes each
name to the group that declares it the same way.

`check_flags` / `check_choice` check values and name the offending flag; `check_path` checks an
input path; `config_checks` runs a config's checks from `__post_init__`, or defers them inside
`deferred_config_checks()` (the argument parser builds configs and would box an error). All raise
`InputError` subclasses whose message is one line.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
import os
import re
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from gaedit_jax.errors import InputError


class InputNotFoundError(InputError, FileNotFoundError):
  """A path given on the command line (or in a config) does not exist."""


def flag_name(field: str) -> str:
  """The command-line flag of a config field: learning_rate -> --learning-rate."""
  return "--" + field.replace("_", "-")


# ------------------------------------------------------------------------------------------------
# Paths
# ------------------------------------------------------------------------------------------------


def check_path(path: str | os.PathLike, flag: str, *, kind: str = "any") -> Path:
  """`path` (given as `flag`) exists, is a file / folder as `kind` ("file", "dir", "any") says, and
  opens for reading (a file: its first byte; a folder: its listing). Returns it as a Path."""
  p = Path(path)
  if not p.exists():
    raise InputNotFoundError(f"{flag} {p}: no such file or folder")
  if kind == "file" and not p.is_file():
    raise InputError(f"{flag} {p}: expected a file, got a folder")
  if kind == "dir" and not p.is_dir():
    raise InputError(f"{flag} {p}: expected a folder, got a file")
  try:
    if p.is_dir():
      os.listdir(p)
    else:
      with open(p, "rb") as f:
        f.read(1)
  except OSError as e:
    raise InputError(f"{flag} {p}: cannot be read ({e.strerror or e})") from None
  return p


# ------------------------------------------------------------------------------------------------
# Flags
# ------------------------------------------------------------------------------------------------

_RULE = re.compile(
  r"(?P<int>int)?\s*(?:(?P<op>>=|>|<=|<)\s*(?P<x>[-+.\w]+)|"
  r"(?P<lb>[\[(])\s*(?P<a>[-+.\w]+)\s*,\s*(?P<b>[-+.\w]+)\s*(?P<rb>[\])]))?"
)


def _check_value(flag: str, v, rule: str) -> None:
  m = _RULE.fullmatch(rule.strip())
  if m is None:
    raise ValueError(f"check_flags: bad rule {rule!r}")
  want_int = m["int"] is not None
  if m["op"]:
    x = float(m["x"])
    ok = lambda y: {">=": y >= x, ">": y > x, "<=": y <= x, "<": y < x}[m["op"]]
    span = f"{m['op']} {m['x']}"
  elif m["lb"]:
    a, b = float(m["a"]), float(m["b"])
    ok = lambda y: (y >= a if m["lb"] == "[" else y > a) and (y <= b if m["rb"] == "]" else y < b)
    span = f"in {m['lb']}{m['a']}, {m['b']}{m['rb']}"
  else:
    ok, span = (lambda y: True), ""
  what = "an integer" if want_int else "a finite number"
  if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
    good = False
  elif want_int:
    good = float(v) == int(v) and ok(int(v))
  else:
    good = math.isfinite(float(v)) and ok(float(v))
  if not good:
    raise InputError(f"{flag} must be {what}{' ' + span if span else ''}, got {v!r}")


def check_flags(cfg, rules: dict[str, str]) -> None:
  """Checks numeric fields of a config: rules map space-separated field names to a rule, "int"
  (optional) then ">= x", "> x", "<= x", "< x" or an interval "[a, b]", "(a, b]", ... ; floats
  must be finite. None (an unset optional flag) passes. The error names the flag (--field-name)."""
  for names, rule in rules.items():
    for name in names.split():
      v = getattr(cfg, name)
      if v is not None:
        _check_value(flag_name(name), v, rule)


_DEFERRED: contextvars.ContextVar[list | None] = contextvars.ContextVar("gaedit_deferred_config_checks", default=None)


def config_checks(check: Callable[[], None]) -> None:
  """Runs a config's checks (call it from `__post_init__`), or records them inside
  `deferred_config_checks()`."""
  pending = _DEFERRED.get()
  if pending is None:
    check()
  else:
    pending.append(check)


@contextlib.contextmanager
def deferred_config_checks():
  """Config checks inside the block run when it exits: the command line builds configs inside the
  argument parser, which would otherwise catch an InputError (a ValueError) and print its own box."""
  pending: list = []
  token = _DEFERRED.set(pending)
  try:
    yield pending
  finally:
    _DEFERRED.reset(token)
  for check in pending:
    check()


def check_choice(cfg, name: str, choices: Sequence) -> None:
  """Field `name` (a value or a tuple of values) takes values among `choices`."""
  v = getattr(cfg, name)
  for x in v if isinstance(v, (tuple, list)) else (v,):
    if x not in choices:
      raise InputError(f"{flag_name(name)}: {x!r} is not one of {', '.join(map(str, choices))}")


# ------------------------------------------------------------------------------------------------
# Nested configs from flat names
# ------------------------------------------------------------------------------------------------


@functools.cache
def _groups(cls) -> dict[str, type]:
  """The fields of `cls` that are nested config groups (dataclasses), with their classes."""
  hints = typing.get_type_hints(cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}


def flat_names(cls) -> set[str]:
  """Every flat flag name of config class `cls`: its own fields and those of its groups."""
  groups = _groups(cls)
  out = {f.name for f in dataclasses.fields(cls) if f.name not in groups}
  for g in groups.values():
    out |= flat_names(g)
  return out


def _route(cls, flags: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
  """Keyword arguments of `cls` from flat names: its own fields as given, the others folded into the
  group that declares them, over the group's `current` value (or its defaults)."""
  groups = _groups(cls)
  own = {f.name for f in dataclasses.fields(cls)}
  kw = {k: v for k, v in flags.items() if k in own}
  rest = {k: v for k, v in flags.items() if k not in own}
  for name, gcls in groups.items():
    mine = {k: rest.pop(k) for k in list(rest) if k in flat_names(gcls)}
    if mine:
      base = kw.get(name, current.get(name, dataclasses.MISSING))
      kw[name] = build(gcls, **mine) if base is dataclasses.MISSING else with_flags(base, **mine)
  if rest:
    raise TypeError(f"{cls.__name__} has no setting {', '.join(sorted(rest))}")
  return kw


def build(cls, **flags: Any):
  """`cls(...)` from flat field names, each routed to the (nested) group that declares it, over the
  groups' defaults in `cls`; a whole group may also be passed by its own name. The Python twin of
  the command line's flat flags."""
  defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
  return cls(**_route(cls, flags, defaults))


def with_flags(cfg, **flags: Any):
  """A copy of config `cfg` with flat-named settings replaced (see `build`)."""
  current = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
  return dataclasses.replace(cfg, **_route(type(cfg), flags, current))


def flag_args(**settings: Any) -> list[str]:
  """Command-line arguments of flat settings: x_y=v -> --x-y v; True -> --x, False -> --no-x; a
  tuple or list -> --x v1 v2 ..."""
  out: list[str] = []
  for name, v in settings.items():
    flag = flag_name(name)
    if isinstance(v, bool):
      out.append(flag if v else "--no-" + flag[2:])
    elif isinstance(v, (tuple, list)):
      out += [flag, *map(str, v)]
    else:
      out += [flag, str(v)]
  return out


def changed_settings(cfg, base=None) -> dict[str, Any]:
  """The flat settings of config `cfg` that differ from the defaults (`base`, an instance of the same
  class; else the class's field defaults), groups recursed against the defaults their parent gives
  them, in field order: what `as_flags` writes."""
  out: dict[str, Any] = {}
  groups = _groups(type(cfg))
  for f in dataclasses.fields(cfg):
    v = getattr(cfg, f.name)
    if base is not None:
      default = getattr(base, f.name)
    elif f.default_factory is not dataclasses.MISSING:
      default = f.default_factory()
    else:
      default = f.default
    if f.name in groups:
      out.update(changed_settings(v, None if default is dataclasses.MISSING else default))
    elif v != default:
      out[f.name] = v
  return out


def as_flags(cfg) -> list[str]:
  """The command-line arguments that parse back to config `cfg` (its non-default settings)."""
  return flag_args(**changed_settings(cfg))


__all__ = [
  "InputNotFoundError",
  "flag_name",
  "check_path",
  "check_flags",
  "check_choice",
  "config_checks",
  "deferred_config_checks",
  "flat_names",
  "flag_args",
  "changed_settings",
  "as_flags",
  "build",
  "with_flags",
]
