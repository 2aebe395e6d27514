"""pole's machine-learning library: datasets, models, losses, stages and the pipeline."""

from ml.spec import __version__

__all__ = ["__version__"]
