"""pole's machine-learning library: datasets, models, losses, stages and the pipeline."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pole")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
