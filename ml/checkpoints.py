"""Self-describing checkpoints: what the network is (its kind and constructor arguments), its
weights, and the resolved config that trained it, so a later stage, or a user, rebuilds the
network from the file alone."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ml.runtime import sha256_file


def save_checkpoint(path: Path, kind: str, net: nn.Module, config: dict, **extra) -> str:
    """`net` must carry `model_args` (its constructor's keyword arguments); returns the file's sha256."""
    torch.save(
        {"kind": kind, "model_args": net.model_args, "state_dict": net.state_dict(), "config": config, **extra}, path
    )
    return sha256_file(path)


def load_checkpoint(path: Path, kind: str, what: str) -> dict:
    """The checkpoint's dict, after checking it holds a network of `kind` (`what` names it in errors)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") != kind:
        found = checkpoint.get("kind") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path} is not a {what} checkpoint (kind={found!r})")
    return checkpoint
