"""Pure imaging layer: decode/encode, detection, classical operators and planning.

Functions here take and return numpy pixels (float32 (H, W, C), C in {1, 3}, in [0, 1]) or
bytes; they know nothing of Prefect, storage or the catalog.
"""

from daguerre.imaging.classical import (
    auto_tone,
    auto_tone_parameters,
    lanczos_upscale,
    nlm_denoise,
    nlm_parameters,
    resize_alpha,
    telea_inpaint,
    telea_parameters,
)
from daguerre.imaging.detect import (
    ColourAnalysis,
    Detection,
    analyse_colour,
    contrast,
    damage_mask,
    detect,
    detect_faces,
    estimate_noise_sigma,
    is_grayscale,
    luminance,
    sharpness,
)
from daguerre.imaging.io import (
    DecodedImage,
    ImageDecodeError,
    ImageInfo,
    array_to_npy_bytes,
    decode,
    encode_access,
    encode_mask_png,
    encode_tiff,
    npy_bytes_to_array,
    probe,
    sniff_format,
)
from daguerre.imaging.plan import (
    PlanOptions,
    StageDecision,
    plan_restoration,
    plan_to_json,
    stages_to_run,
)

__all__ = [
    "ColourAnalysis",
    "DecodedImage",
    "Detection",
    "ImageDecodeError",
    "ImageInfo",
    "PlanOptions",
    "StageDecision",
    "analyse_colour",
    "array_to_npy_bytes",
    "auto_tone",
    "auto_tone_parameters",
    "contrast",
    "damage_mask",
    "decode",
    "detect",
    "detect_faces",
    "encode_access",
    "encode_mask_png",
    "encode_tiff",
    "estimate_noise_sigma",
    "is_grayscale",
    "lanczos_upscale",
    "luminance",
    "nlm_denoise",
    "nlm_parameters",
    "npy_bytes_to_array",
    "plan_restoration",
    "plan_to_json",
    "probe",
    "resize_alpha",
    "sharpness",
    "sniff_format",
    "stages_to_run",
    "telea_inpaint",
    "telea_parameters",
]
