"""One resolver for every pretrained weight file pole loads (CLIP and torchvision backbones).

`resolve_clip(model, pretrained)` and `resolve_backbone(name, weights)` accept, in this order:
  1. "random": no weights, explicitly untrained (tests, the sample world); recorded as such;
  2. a tag shipped inside pole (e.g. CLIP "pole-tiny" / "pole-world");
  3. a path to a local file;
  4. a named pretrained tag (CLIP: any open_clip tag such as "openai"; backbones: "imagenet"),
     found in POLE_WEIGHTS_DIR or the download caches, else downloaded where a network exists.
Otherwise they raise WeightsError naming the config key to change and the valid choices. Nothing
here waits on a network: with POLE_OFFLINE=1 no connection is tried, and without it a 3-second
reachability probe runs before any download.

`held_weight_tags()` lists the named tags of 2. and 4. that this machine has the files of: what a
worker advertises so the API accepts only jobs some worker can load (ml.spec.weight_tags).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from ml.spec.weight_tags import BACKBONE, CLIP, looks_like_path

ASSETS = Path(__file__).parent / "assets"
SHIPPED_CLIP = {("pole-tiny", "pole-world"): ASSETS / "pole-tiny-world.pt"}
PROBE_TIMEOUT_S = 3.0


class WeightsError(RuntimeError):
    """Weights that cannot be had; the message says which setting to change."""


@dataclass(frozen=True)
class ResolvedWeights:
    name: str  # model name
    source: str  # "random" | shipped/named tag | the file path given
    path: Path | None  # the file to load; None for random
    sha256: str | None

    def record(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def offline() -> bool:
    return os.environ.get("POLE_OFFLINE", "").lower() in ("1", "true", "yes")


def weights_dir() -> Path:
    return Path(os.environ.get("POLE_WEIGHTS_DIR", Path.home() / ".cache" / "pole" / "weights"))


def resolve_clip(model: str, pretrained: str) -> ResolvedWeights:
    import open_clip

    register_shipped_clip_configs()
    if model not in open_clip.list_models():
        raise WeightsError(
            f"models.clip_model={model!r} is not an open_clip model; available: {', '.join(open_clip.list_models())}"
        )
    if pretrained == "random":
        return ResolvedWeights(model, "random", None, None)
    if (model, pretrained) in SHIPPED_CLIP:
        path = SHIPPED_CLIP[(model, pretrained)]
        if not path.is_file():
            raise WeightsError(f"the shipped CLIP checkpoint {path} is missing from this install; reinstall pole")
        return _resolved(model, pretrained, path)
    if looks_like_path(pretrained):
        return _resolved(model, pretrained, _existing_file(pretrained, "models.clip_pretrained"))
    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model) + [t for m, t in SHIPPED_CLIP if m == model]
        raise WeightsError(
            f"models.clip_pretrained={pretrained!r} is neither a file nor a tag of {model}; "
            f"tags: {', '.join(tags) or 'none'}; or 'random'"
        )
    cached = _cached_clip_file(model, pretrained, cfg)
    if cached:
        return _resolved(model, pretrained, cached)
    hint = (
        f"set models.clip_pretrained to a local checkpoint file, or put it at "
        f"{weights_dir() / f'{model}-{pretrained}.pt'} (POLE_WEIGHTS_DIR)"
    )
    host = urlparse(cfg.get("url") or "https://huggingface.co").hostname
    _require_network(f"CLIP {model}/{pretrained}", host, hint)
    path = Path(open_clip.download_pretrained(cfg, cache_dir=str(weights_dir() / "clip")))
    return _resolved(model, pretrained, path)


def resolve_backbone(name: str, weights: str) -> ResolvedWeights:
    """torchvision classification weights (a ResNet, a MobileNet); 'imagenet' is IMAGENET1K_V1 (as IRNet)."""
    from torchvision.models import get_model_weights, list_models

    if name not in list_models():
        raise WeightsError(f"backbone {name!r} is not a torchvision model; try resnet18/34/50/101")
    if weights == "random":
        return ResolvedWeights(name, "random", None, None)
    if looks_like_path(weights):
        return _resolved(
            name, weights, _existing_file(weights, "models.cam_weights / models.irn_weights / models.seg_weights")
        )
    if weights != "imagenet":
        raise WeightsError(f"backbone weights {weights!r} for {name}: use 'imagenet', a local .pth file, or 'random'")
    url = get_model_weights(name).IMAGENET1K_V1.url
    filename = os.path.basename(url)
    cached = _cached_backbone_file(filename)
    if cached:
        return _resolved(name, weights, cached)
    hint = (
        f"set models.cam_weights / models.irn_weights / models.seg_weights to a local .pth file, or put {filename} "
        f"in {weights_dir()} (POLE_WEIGHTS_DIR)"
    )
    _require_network(f"ImageNet weights for {name}", urlparse(url).hostname, hint)
    target = weights_dir() / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    import torch

    torch.hub.download_url_to_file(url, str(target), progress=True)
    return _resolved(name, weights, target)


def held_weight_tags() -> dict[str, list[list[str]]]:
    """The named weights the resolvers above would find on this machine without a network, as
    `{"clip": [[model, tag], ...], "backbone": [[architecture, "imagenet"], ...]}`, sorted.

    Only whether each file exists is checked: nothing is read or hashed, so a scan takes milliseconds
    (the imports take seconds)."""
    import open_clip
    import torchvision.models
    from torchvision.models import get_model_weights, list_models

    register_shipped_clip_configs()
    clip = [[model, tag] for (model, tag), path in SHIPPED_CLIP.items() if path.is_file()]
    clip += [
        [model, tag]
        for model, tag in open_clip.list_pretrained()
        if _cached_clip_file(model, tag, open_clip.get_pretrained_cfg(model, tag))
    ]
    backbone = []
    for name in list_models(module=torchvision.models):  # the classifiers: the only ones with ImageNet weights
        imagenet = getattr(get_model_weights(name), "IMAGENET1K_V1", None)
        if imagenet is not None and _cached_backbone_file(os.path.basename(imagenet.url)):
            backbone.append([name, "imagenet"])
    return {CLIP: sorted(clip), BACKBONE: sorted(backbone)}


def register_shipped_clip_configs() -> None:
    """Make open_clip know the model configs pole ships (ml/assets/*.json)."""
    import open_clip

    # Only model configs count: a checkpoint's provenance JSON also lives in assets/.
    configs = [p for p in ASSETS.glob("*.json") if "embed_dim" in json.loads(p.read_text())]
    if not all(p.stem in open_clip.list_models() for p in configs):
        open_clip.add_model_config(ASSETS)


def _existing_file(value: str, setting: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise WeightsError(f"{setting}: weight file {value} not found; give an existing file or a named tag")
    return path


def _resolved(name: str, source: str, path: Path) -> ResolvedWeights:
    from ml.runtime import sha256_file

    return ResolvedWeights(name, source, path, sha256_file(path))


def _cached_backbone_file(filename: str) -> Path | None:
    import torch

    for folder in (weights_dir(), Path(torch.hub.get_dir()) / "checkpoints"):
        if (folder / filename).is_file():
            return folder / filename
    return None


def _cached_clip_file(model: str, tag: str, cfg: dict) -> Path | None:
    for suffix in (".pt", ".bin", ".safetensors"):
        local = weights_dir() / f"{model}-{tag}{suffix}"
        if local.is_file():
            return local
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])  # "org/model/" names the repo's default file
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for cache_dir in (weights_dir() / "clip", None):
            for fname in names:
                hit = try_to_load_from_cache(repo, fname, cache_dir=cache_dir)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return Path(hit)
    if cfg.get("url"):
        hit = weights_dir() / "clip" / os.path.basename(cfg["url"])
        if hit.is_file():
            return hit
    return None


def _require_network(what: str, host: str | None, hint: str) -> None:
    if offline():
        raise WeightsError(f"{what} are not on this machine and POLE_OFFLINE=1 forbids downloading; {hint}")
    try:
        socket.create_connection((host or "huggingface.co", 443), timeout=PROBE_TIMEOUT_S).close()
    except OSError as err:
        raise WeightsError(f"{what} are not on this machine and {host} is unreachable ({err}); {hint}") from err
