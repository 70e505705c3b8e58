"""An external 2D editor for `gaedit edit --editor command`, built on the synthetic editor.

  python experiments/synthetic_edit_command.py --target-data FACEPAINT [--noise 1.0] [--seed 0] \
      [--iteration N] INPUT OUTPUT

Reads INPUT/manifest.json (edit.external's format: file, camera_index, timestep per frame) and the
renders INPUT/<file>, and writes OUTPUT/<file>: the face-paint ground truth of the frame's (camera,
timestep) with the synthetic editor's view-inconsistent noise (edit.editors.SyntheticEditor, key =
seed folded with the iteration), i.e. what `--editor synthetic` computes inside the step. With
--noise 0 the output is the ground truth itself, byte for byte the built-in editor's target.

  gaedit edit --avatar MODEL --out OUT --editor command --edit-every 10 \
      --edit-command "python experiments/synthetic_edit_command.py --target-data FACEPAINT --iteration {iteration} {input} {output}"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("input", type=Path)
  p.add_argument("output", type=Path)
  p.add_argument(
    "--target-data", type=Path, required=True, help="the face-paint dataset (gaedit synth --texture facepaint)"
  )
  p.add_argument("--noise", type=float, default=1.0, help="strength of the synthetic editor's noise (0: exact targets)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--iteration", type=int, default=0, help="folded into the noise key ({iteration})")
  p.add_argument("--black-background", action="store_true")
  a = p.parse_args(argv)

  from gaedit_jax.data.layout import read_transforms, split_json_path
  from gaedit_jax.edit.editors import EditContext, NoiseConfig, SyntheticEditor
  from gaedit_jax.io.media import read_png, save_png

  man = json.loads((a.input / "manifest.json").read_text())
  frames = man["frames"]
  if not frames:
    return 0
  _, recs = read_transforms(split_json_path(a.target_data, "all"))
  scale = frames[0]["width"] / recs[0].width  # the run's image scale
  ed = SyntheticEditor.from_dataset(
    a.target_data, NoiseConfig(strength=a.noise), image_scale=scale, white_background=not a.black_background
  )
  renders = jnp.asarray(np.stack([read_png(a.input / f["file"]) for f in frames]))
  ctx = EditContext.make([f["camera_index"] for f in frames], [f["timestep"] for f in frames], a.iteration)
  if not bool(np.all(np.asarray(ed.covers(ctx)))):
    print(f"{a.target_data} lacks some of the requested views", file=sys.stderr)
    return 3
  key = jax.random.fold_in(jax.random.key(a.seed), a.iteration)
  out = np.asarray(ed(key, renders, renders, ctx))
  a.output.mkdir(parents=True, exist_ok=True)
  for f, img in zip(frames, out):
    save_png(a.output / f["file"], img)
  print(f"edited {len(frames)} frames")
  return 0


if __name__ == "__main__":
  sys.exit(main())
