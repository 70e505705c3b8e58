"""A headless Chromium driven through the DevTools protocol (CDP) over `websockets` (a viser
dependency): open a page, evaluate JavaScript, click, take screenshots. Enough to test the web
viewer in a real browser without playwright / selenium."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
import warnings

import numpy as np
from websockets.sync.client import connect


def chromium_path() -> str | None:
  for name in ("chromium", "chromium-browser", "google-chrome"):
    p = shutil.which(name)
    if p:
      return p
  return None


class Browser:
  """One headless Chromium with one page at `url` (window width x height CSS pixels)."""

  def __init__(self, url: str, width: int = 1200, height: int = 800, timeout: float = 30.0):
    exe = chromium_path()
    if exe is None:
      raise RuntimeError("chromium is not installed")
    self._profile = tempfile.mkdtemp(prefix="gaedit-chromium-")
    with warnings.catch_warnings():  # fork+exec of the browser: JAX's fork warning is moot
      warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
      self.proc = self._launch(exe, url, width, height)
    port_file = os.path.join(self._profile, "DevToolsActivePort")
    end = time.time() + timeout
    while not os.path.exists(port_file) or not open(port_file).read().strip():
      if time.time() > end or self.proc.poll() is not None:
        self.close()
        raise RuntimeError("chromium did not start its DevTools server")
      time.sleep(0.1)
    port = int(open(port_file).read().split()[0])
    ws_url = None
    while ws_url is None:
      pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5))
      ws_url = next((p["webSocketDebuggerUrl"] for p in pages if p.get("type") == "page"), None)
      if ws_url is None:
        if time.time() > end:
          self.close()
          raise RuntimeError("chromium opened no page")
        time.sleep(0.1)
    self.ws = connect(ws_url, max_size=None, open_timeout=timeout)
    self._ids = itertools.count(1)
    self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

  def _launch(self, exe: str, url: str, width: int, height: int) -> subprocess.Popen:
    args = [
      exe,
      "--headless=new",
      "--no-sandbox",
      "--disable-gpu",
      "--enable-unsafe-swiftshader",
      "--use-angle=swiftshader",
      "--no-first-run",
      "--remote-debugging-port=0",
      f"--user-data-dir={self._profile}",
      f"--window-size={width},{height}",
      url,
    ]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

  def call(self, method: str, timeout: float = 30.0, **params) -> dict:
    i = next(self._ids)
    self.ws.send(json.dumps(dict(id=i, method=method, params=params)))
    end = time.time() + timeout
    while True:
      msg = json.loads(self.ws.recv(timeout=max(end - time.time(), 0.01)))
      if msg.get("id") == i:
        if "error" in msg:
          raise RuntimeError(f"{method}: {msg['error']}")
        return msg.get("result", {})

  def eval(self, expression: str):
    r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
    if "exceptionDetails" in r:
      raise RuntimeError(f"JavaScript error: {r['exceptionDetails']}")
    return r["result"].get("value")

  def wait_for(self, expression: str, timeout: float = 30.0, interval: float = 0.2):
    """Polls a JavaScript expression until it is truthy; returns its value."""
    end = time.time() + timeout
    while True:
      v = self.eval(expression)
      if v:
        return v
      if time.time() > end:
        raise TimeoutError(f"timed out waiting for {expression}")
      time.sleep(interval)

  def click(self, x: float, y: float) -> None:
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
      self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

  def screenshot(self) -> np.ndarray:
    """The page as RGB uint8 [H,W,3]."""
    from PIL import Image

    data = self.call("Page.captureScreenshot", format="png")["data"]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))

  def close(self) -> None:
    try:
      if getattr(self, "ws", None) is not None:
        self.ws.close()
    finally:
      self.proc.terminate()
      try:
        self.proc.wait(10)
      except subprocess.TimeoutExpired:
        self.proc.kill()
      shutil.rmtree(self._profile, ignore_errors=True)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
