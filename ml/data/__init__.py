"""Datasets in, without torch: readers for the two layouts, validation, image decoding.

The API validates uploads with exactly these checks, so nothing here may import torch.
"""

from ml.data.dataset import Dataset, DatasetError, ImageRecord, Problem
from ml.data.readers import load_dataset

__all__ = ["Dataset", "DatasetError", "ImageRecord", "Problem", "load_dataset"]
