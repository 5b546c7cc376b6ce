"""Pure imaging layer: decode/encode, detection, classical operators and planning.

Functions here take and return numpy pixels (float32 (H, W, C), C in {1, 3}, in [0, 1]) or
bytes; they know nothing of Prefect, storage or the catalog.

The names below are imported on first use (PEP 562), so code that needs one module (training
needs only `degrade`) does not load pyvips, pydantic and the rest. `detect()` itself is
`daguerre.imaging.detect.detect` (the package attribute `detect` is that submodule).
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "ColourAnalysis": "detect",
    "DecodedImage": "io",
    "Detection": "detect",
    "ImageDecodeError": "io",
    "ImageInfo": "io",
    "PlanOptions": "plan",
    "StageDecision": "plan",
    "analyse_colour": "detect",
    "array_to_npy_bytes": "io",
    "auto_tone": "classical",
    "auto_tone_parameters": "classical",
    "contrast": "detect",
    "damage_mask": "detect",
    "decode": "io",
    "detect_faces": "detect",
    "encode_access": "io",
    "encode_mask_png": "io",
    "encode_tiff": "io",
    "estimate_noise_sigma": "noise",
    "is_grayscale": "detect",
    "lanczos_upscale": "classical",
    "luminance": "detect",
    "nlm_denoise": "classical",
    "nlm_parameters": "classical",
    "npy_bytes_to_array": "io",
    "plan_restoration": "plan",
    "plan_to_json": "plan",
    "probe": "io",
    "resize_alpha": "classical",
    "sharpness": "detect",
    "sniff_format": "io",
    "stages_to_run": "plan",
    "telea_inpaint": "classical",
    "telea_parameters": "classical",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
