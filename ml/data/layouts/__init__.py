"""The two dataset layouts, manifest and VOC, each listing a folder's classes and images for `ml.data.readers`."""
