"""`gaedit view`: an interactive web viewer (viser) of trained avatars, rendered on the server by the
project's own rasterizer for the browser's camera.

* `scene`: the pure parts: viser camera <-> Camera, the shown frame's FLAME state, the render path.
* `demo`: the built-in synthetic avatar (no trained model needed; tests and benchmark).
* `controls`: the GUI panel (timestep, playback, FLAME sliders, cameras, quality, capture).
* `server`: the session: viser server, one render thread per browser with a single-slot latest
  request (stale camera requests are dropped, never queued), playback, screenshots, recordings.
* `watch`: follow a running `gaedit reconstruct` / `gaedit edit` run folder's exports.

Sits beside the stages: imports avatar, io, render, camera, flame, data; never a stage or commands.
"""
