"""The viewer's GUI panel (viser), shared by every browser: playback, FLAME sliders, cameras, view and
quality settings, capture. It holds the shown frame's settings (`ViewSettings`) and tells the
session through `on_change` / the capture callbacks; it renders nothing itself.

FLAME sliders are absolute parameter values. They follow the sequence while untouched; a slider the
user moves overrides that one component at every timestep (playback keeps animating the rest) until
"reset to sequence"."""

from __future__ import annotations

import dataclasses
import threading
from typing import Callable

import viser

from gaedit_jax.flame import FlameMotion
from gaedit_jax.viewer.scene import POSE_COMPONENTS, motion_value

# slider ranges (radians for poses; expression coefficients are unit-variance PCA weights)
_RANGES = dict(rotation=1.2, neck_pose=0.8, jaw_pose=0.6, eyes_pose=0.6, expr=3.0)
SHOW_MODES = ("original", "edited", "side by side")
FREE_CAMERA = "free (browser)"


@dataclasses.dataclass(frozen=True)
class ViewSettings:
  """What the shown frame depends on, besides the browser's camera."""

  timestep: int = 0
  overrides: tuple[tuple[tuple[str, int], float], ...] = ()
  sh_degree: int = 3
  max_size: int = 512
  jpeg_quality: int = 85
  show: str = "original"
  wireframe: bool = False

  @property
  def override_map(self) -> dict[tuple[str, int], float]:
    return dict(self.overrides)


class Controls:
  """Builds the panel on `server` for a sequence of `num_timesteps` with `n_expr_sliders`
  expression sliders; `presets` are camera names (the first is the free browser camera)."""

  def __init__(
    self,
    server: viser.ViserServer,
    *,
    motion: FlameMotion,
    sh_degree: int,
    max_size: int,
    fps: float,
    presets: list[str],
    compare: bool,
    n_expr_sliders: int = 10,
    on_change: Callable[[], None],
    on_preset: Callable[[str, viser.ClientHandle | None], None],
    on_screenshot: Callable[[viser.ClientHandle | None], None],
    on_record: Callable[[viser.ClientHandle | None], None],
  ):
    self._lock = threading.RLock()
    self._motion = motion
    self._on_change = on_change
    self._overrides: dict[tuple[str, int], float] = {}
    self.playing = False
    gui = server.gui
    t_max = max(motion.num_timesteps - 1, 0)

    with gui.add_folder("Playback"):
      self.timestep = gui.add_slider("timestep", 0, max(t_max, 1), 1, 0, disabled=t_max == 0)
      self.play = gui.add_button("play", disabled=t_max == 0)
      self.fps = gui.add_slider("fps", 1, 60, 1, int(fps))
    with gui.add_folder("FLAME"):
      self._sliders: dict[tuple[str, int], viser.GuiSliderHandle] = {}
      for label, field, i in POSE_COMPONENTS:
        r = _RANGES[field]
        self._sliders[(field, i)] = gui.add_slider(label, -r, r, 0.01, self._seq_value(field, i, 0))
      with gui.add_folder("expression", expand_by_default=False):
        for i in range(min(n_expr_sliders, motion.n_expr)):
          r = _RANGES["expr"]
          self._sliders[("expr", i)] = gui.add_slider(f"expr {i}", -r, r, 0.01, self._seq_value("expr", i, 0))
      self.reset = gui.add_button("reset to sequence")
    with gui.add_folder("Camera"):
      self.camera = gui.add_dropdown("camera", tuple(presets), initial_value=presets[0], disabled=len(presets) <= 1)
    with gui.add_folder("View"):
      self.show = gui.add_dropdown(
        "show",
        SHOW_MODES if compare else SHOW_MODES[:1],
        initial_value="side by side" if compare else "original",
        disabled=not compare,
      )
      self.wireframe = gui.add_checkbox("FLAME wireframe", False)
      self.sh = gui.add_slider("SH degree", 0, max(sh_degree, 1), 1, sh_degree, disabled=sh_degree == 0)
      self.max_size = gui.add_slider("max image size", 64, 2048, 32, int(max_size))
      self.quality = gui.add_slider("JPEG quality", 10, 100, 1, 85)
    with gui.add_folder("Capture"):
      self.screenshot = gui.add_button("screenshot (PNG)")
      self.record = gui.add_button("record motion (mp4)")
      self.status = gui.add_markdown("")

    for h in (self.timestep, self.sh, self.max_size, self.quality, self.show, self.wireframe):
      h.on_update(lambda _e: self._on_change())
    self.timestep.on_update(lambda _e: self._sync_sliders())
    for key, h in self._sliders.items():
      h.on_update(lambda e, key=key: self._slider_moved(key, e))
    self.reset.on_click(lambda _e: self.reset_overrides())
    self.play.on_click(lambda _e: self.set_playing(not self.playing))
    self.camera.on_update(lambda e: on_preset(self.camera.value, e.client))
    self.screenshot.on_click(lambda e: on_screenshot(e.client))
    self.record.on_click(lambda e: on_record(e.client))

  # -- FLAME sliders --------------------------------------------------------------------------

  def _seq_value(self, field: str, i: int, t: int) -> float:
    return motion_value(self._motion, t, field, i)

  def _slider_moved(self, key: tuple[str, int], event) -> None:
    if event.client is None:  # our own update (following the sequence), not the user
      return
    with self._lock:
      self._overrides[key] = float(self._sliders[key].value)
    self._on_change()

  def _sync_sliders(self) -> None:
    """Untouched sliders show the current timestep's values."""
    t = int(self.timestep.value)
    with self._lock:
      free = [k for k in self._sliders if k not in self._overrides]
    for field, i in free:
      self._sliders[(field, i)].value = self._seq_value(field, i, t)

  def reset_overrides(self) -> None:
    with self._lock:
      self._overrides.clear()
    self._sync_sliders()
    self._on_change()

  def set_override(self, field: str, i: int, value: float) -> None:
    """Programmatic equivalent of the user moving a FLAME slider."""
    with self._lock:
      self._overrides[(field, i)] = float(value)
    self._sliders[(field, i)].value = float(value)
    self._on_change()

  def set_motion(self, motion: FlameMotion) -> None:
    """A new sequence (a reloaded export): the timestep range and the untouched sliders follow."""
    with self._lock:
      self._motion = motion
    t_max = max(motion.num_timesteps - 1, 0)
    self.timestep.max = max(t_max, 1)
    if self.timestep.value > t_max:
      self.timestep.value = t_max
    self._sync_sliders()

  # -- playback ---------------------------------------------------------------------------------

  def set_playing(self, playing: bool) -> None:
    self.playing = bool(playing)
    self.play.label = "pause" if self.playing else "play"

  def advance(self) -> None:
    """The next timestep of the sequence (looping)."""
    n = self._motion.num_timesteps
    self.timestep.value = (int(self.timestep.value) + 1) % max(n, 1)

  # -- state ------------------------------------------------------------------------------------

  def settings(self) -> ViewSettings:
    with self._lock:
      ov = tuple(sorted(self._overrides.items()))
    return ViewSettings(
      timestep=int(self.timestep.value),
      overrides=ov,
      sh_degree=int(self.sh.value),
      max_size=int(self.max_size.value),
      jpeg_quality=int(self.quality.value),
      show=str(self.show.value),
      wireframe=bool(self.wireframe.value),
    )

  def set_status(self, text: str) -> None:
    self.status.content = text


def slider_value(controls: Controls, field: str, i: int) -> float:
  return float(controls._sliders[(field, i)].value)


__all__ = ["Controls", "FREE_CAMERA", "SHOW_MODES", "ViewSettings", "slider_value"]
