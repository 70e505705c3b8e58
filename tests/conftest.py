import os
import sys

# tests import small helpers (e.g. raster_scenes) from this folder
sys.path.insert(0, os.path.dirname(__file__))
