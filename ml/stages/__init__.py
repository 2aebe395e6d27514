"""One module per pipeline stage, each exposing `run(ctx: StageContext) -> None`.

Stage outputs (under the run directory; the contracts between stages):
  train_cam/       model.pt (CAM classifier checkpoint), log.json, stage.json
  select_prompts/  selections.jsonl (image, class, label, candidates, scores, chosen), candidates.json
  train_pole/      model.pt (CAM network trained with CLIP guidance), log.json
  make_cams/       <image id>.npz: keys (tagged labels), cam (full res), cam_s4 (stride 4), float16
  eval_cams/       metrics.json (fixed-threshold mIoU, per-class IoU, threshold sweep)
  make_seeds/      <image id>.png: 0..K, 255 uncertain
  train_irn/       model.pt (boundary branch)
  refine/          <image id>.png: random-walk masks
  crf/             <image id>.png: CRF post-processed masks (optional stage)
  eval_masks/      metrics.json
  export/          masks/ (CVAT "Segmentation mask 1.1" layout) and pole_masks.zip
Every stage also writes stage.json (seed, config section, weight and checkpoint hashes).
"""
