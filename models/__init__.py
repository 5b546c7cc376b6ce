"""Daguerre's learned models: registry, architectures, safe loading, inference, training.

The registry is imported eagerly (it needs no torch); the torch-based parts load on first use,
so `import daguerre.models` stays cheap for code that only reads descriptors.

    from daguerre.models import default_for, load_model, run_tiled
    model = load_model(default_for("denoise"))
    clean = run_tiled(model, noisy, noise_sigma=25)
"""

from __future__ import annotations

import importlib
from typing import Any

from .registry import SHIPPED, ModelDescriptor, SizeRequirements, default_for, get_descriptor

_LAZY = {
    "LoadedModel": "loading",
    "ModelSpec": "loading",
    "WeightsError": "loading",
    "load_model": "loading",
    "load_state_dict": "loading",
    "load_user_model": "loading",
    "parse_model_spec": "loading",
    "sha256_file": "loading",
    "pick_device": "inference",
    "run_tiled": "inference",
    "TrainResult": "training",
    "train": "training",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SHIPPED",
    "ModelDescriptor",
    "SizeRequirements",
    "default_for",
    "get_descriptor",
    *_LAZY,
]
