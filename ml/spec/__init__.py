"""The torch-free spec every side shares: the config schema and presets, the stage, prompt and export
registries, and the run directory's layout with the readers of its files.

The API validates job configs and finds run files through this package, so nothing here may import
torch (an import contract holds it to that).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pole")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
