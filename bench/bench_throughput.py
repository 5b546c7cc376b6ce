"""Megapixels per second of every shipped model on one device, as the pipeline runs them.

Each model is loaded from the registry (`load_model`, sha256-checked) and run through
`LoadedModel.run` on a synthetic SIZE x SIZE image, host-to-device copies included (the
pipeline pays them too): one warm-up run, then the median of RUNS. Inpainting gets a mask of
scratches over 3% of the pixels; colorizers a grey image. MP/s counts input pixels.

Needs only torch, numpy, OpenCV and safetensors, so it runs on a lent GPU from the bare
checkout (`infra/gpu_train.sh` calls it before its trainings):

    .venv/bin/python bench/bench_throughput.py --device cpu --size 512 --threads 2
    python3 bench/bench_throughput.py --device cuda --size 2048 --out $OUT/throughput.json
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _inputs(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A smooth, textured colour image (H, W, 3) float32 and a scratch mask (H, W) bool."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.stack([0.5 + 0.3 * np.sin(6 * xx + k) * np.cos(4 * yy) for k in range(3)], axis=2)
    img += rng.normal(0, 0.05, img.shape).astype(np.float32)
    mask = np.zeros((size, size), bool)
    for _ in range(max(1, size // 64)):
        mask[:, int(rng.integers(size))] = True  # one-pixel vertical scratches...
        mask[int(rng.integers(size)), :] = True  # ...and horizontal ones
    mask |= rng.random((size, size)) < 0.02
    return np.clip(img, 0, 1).astype(np.float32), mask


def main() -> None:
    from common import bench_parser, write_results

    parser = bench_parser(__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "throughput.json")
    a = parser.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    # Importing it maps the checkout's models/ to daguerre.models (a bare checkout has no install).
    sys.path.insert(0, str(ROOT / "infra"))
    import train_uninstalled  # noqa: F401

    from daguerre.models.inference import pick_device
    from daguerre.models.loading import load_model
    from daguerre.models.registry import SHIPPED

    device = pick_device(a.device)
    colour, mask = _inputs(a.size, np.random.default_rng(0))
    grey = colour.mean(axis=2, keepdims=True)
    rows: dict[str, dict[str, float | str]] = {}
    for descriptor in SHIPPED:
        model = load_model(descriptor, device=device)
        image = grey if descriptor.task == "colorize" or model.in_channels == 1 else colour
        kwargs = {"mask": mask} if model.needs_mask else {}

        def once(model=model, image=image, kwargs=kwargs) -> float:
            start = time.perf_counter()
            model.run(image, **kwargs)
            return time.perf_counter() - start

        once()  # warm-up: kernels chosen, memory allocated
        seconds = statistics.median(once() for _ in range(a.runs))
        rows[descriptor.id] = {
            "task": descriptor.task,
            "mp_per_s": round(a.size**2 / 1e6 / seconds, 3),
        }
        print(f"{descriptor.id:32s} {rows[descriptor.id]['mp_per_s']:9.3f} MP/s", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    write_results(
        a.out,
        {
            "device": name,
            "size": a.size,
            "runs": a.runs,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "models": rows,
        },
    )


if __name__ == "__main__":
    main()
