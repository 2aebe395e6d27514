"""The torch-free spec every side shares: the config schema and presets, the stage, prompt and export
registries, and the run directory's layout with the readers of its files.

The API validates job configs and finds run files through this package, so nothing here may import
torch (an import contract holds it to that).
"""
