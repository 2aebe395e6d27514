"""The sample world and its tiny CLIP, so pole can run and be measured offline.

`scenes` (with `shapes` and `painting`) renders tagged images with exact masks and `dataset` writes
them as a dataset, all without torch; `views`, `clip_training` and `clip_eval` train and measure
the CLIP shipped as "pole-tiny"/"pole-world". Nothing is imported here, so the generator stays
importable without torch.
"""
