"""Helpers the benchmark scripts share: test sets, options, models, PSNR, speed, results.

The scripts run as `.venv/bin/python bench/bench_X.py`, so this module is imported as `common`
(the script's folder is first on sys.path). Nothing here decides a protocol: each script keeps
its own seeds, degradations and scores; this module only reads, times and writes.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    from daguerre.models.loading import LoadedModel

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
TEST_DATASETS = DATASETS / "test"  # benchmarks only; never trained on
# Test sets read as whole images from test/NAME, and whether they are colour (else grey).
COLOUR_SETS: dict[str, bool] = {"CBSD68": True, "BSD68": False, "Set12": False}


# --------------------------------------------------------------------------- options


def bench_parser(description: str | None) -> argparse.ArgumentParser:
    """A parser that prints the script's docstring verbatim as its --help description."""
    return argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_model_option(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """`--model LABEL=WEIGHTS`, repeatable, collected in order into `args.model`."""
    parser.add_argument("--model", action="append", default=[], metavar="LABEL=WEIGHTS", help=help)


def add_run_options(
    parser: argparse.ArgumentParser,
    out: Path,
    limit_help: str = "only the first N images per set",
) -> None:
    """`--limit N` (0: all images), `--threads N` (default 2) and `--out` (the results JSON)."""
    parser.add_argument("--limit", type=int, default=0, help=limit_help)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=out)


def set_threads(threads: int) -> None:
    """Limit torch's and OpenCV's thread pools to `threads` (before any model runs)."""
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


# --------------------------------------------------------------------------- images


def image_paths(folder: Path, suffixes: Iterable[str] = (".png",)) -> list[Path]:
    """Files below `folder` (recursively) whose lower-cased suffix is in `suffixes`, sorted."""
    wanted = set(suffixes)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in wanted)


def load_images(
    folder: Path,
    colour: bool,
    limit: int = 0,
    suffixes: Iterable[str] = (".png",),
    skip_unreadable: bool = False,
) -> list[np.ndarray]:
    """The first `limit` images (0: all) of `image_paths(folder, suffixes)` as uint8 arrays.

    Colour images are (H, W, 3) RGB, grey ones (H, W, 1). A file OpenCV cannot decode raises
    ValueError, or is passed over (not counted in `limit`) with `skip_unreadable`.
    """
    flag = cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE
    images: list[np.ndarray] = []
    for path in image_paths(folder, suffixes):
        if limit and len(images) == limit:
            break
        img = cv2.imread(str(path), flag)
        if img is None:
            if skip_unreadable:
                continue
            raise ValueError(f"cannot decode {path}")
        images.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if colour else img[..., None])
    return images


def load_test_set(
    name: str, limit: int = 0, suffixes: Iterable[str] = (".png",), skip_unreadable: bool = False
) -> list[np.ndarray]:
    """Test set `name` (a key of COLOUR_SETS) in its colour or grey, uint8, as `load_images`."""
    return load_images(TEST_DATASETS / name, COLOUR_SETS[name], limit, suffixes, skip_unreadable)


def unit(img: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1]."""
    return img.astype(np.float32) / 255.0


def quantise(img: np.ndarray) -> np.ndarray:
    """Float pixels clipped to [0, 1] and rounded to the 8-bit grid, still float32 in [0, 1]."""
    return np.round(np.clip(img, 0, 1) * 255) / np.float32(255)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1] (beyond is clipped) -> rounded uint8."""
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- scores


def psnr_from_mse(mse: float, peak: float = 1.0) -> float:
    """PSNR in dB of a mean squared error on a [0, peak] scale (mse > 0)."""
    return 10 * math.log10(peak**2 / mse)


def mean_scores(rows: dict[str, list[float]], digits: int = 2) -> dict[str, float]:
    """Each non-empty list of scores replaced by its mean, rounded to `digits`."""
    return {k: round(float(np.mean(v)), digits) for k, v in rows.items() if v}


# --------------------------------------------------------------------------- models


def model_record(model: LoadedModel, path: str | Path, **extra: Any) -> dict[str, Any]:
    """Provenance of a benchmarked model for the results JSON: its weights' hash, `extra`
    fields (e.g. its scale), its parameter count and the size of its weights file."""
    return {
        "weights_sha256": model.weights_sha256,
        **extra,
        "parameters": sum(p.numel() for p in model.module.parameters()),
        "file_bytes": Path(path).stat().st_size,
    }


def load_models(task: str, specs: Sequence[str]) -> dict[str, tuple[LoadedModel, str]]:
    """Each `LABEL=WEIGHTS` of `specs` loaded on the CPU as a `task` model, by label, in order,
    with the weights path it came from."""
    from daguerre.models.loading import load_user_model

    models: dict[str, tuple[LoadedModel, str]] = {}
    for spec in specs:
        label, _, path = spec.partition("=")
        models[label] = (load_user_model(task, path, device="cpu"), path)
    return models


# --------------------------------------------------------------------------- speed and results


class Speeds:
    """Megapixels per second, one sample per timed call, per label; reported as medians."""

    def __init__(self, labels: Iterable[str] = ()) -> None:
        # Labels given here come first in the report, in this order; others as first timed.
        self.samples: dict[str, list[float]] = {label: [] for label in labels}

    @contextmanager
    def timing(self, label: str, megapixels: float) -> Iterator[None]:
        """Time the `with` block and record `megapixels` / its seconds under `label`."""
        t0 = time.perf_counter()
        yield
        seconds = time.perf_counter() - t0
        self.samples.setdefault(label, []).append(megapixels / max(seconds, 1e-9))

    def median(self, label: str) -> float:
        """The median speed of `label`, rounded to 3 decimals."""
        return round(statistics.median(self.samples[label]), 3)

    def medians(self) -> dict[str, float]:
        """`median` of every label timed at least once."""
        return {label: self.median(label) for label, v in self.samples.items() if v}


def megapixels(img: np.ndarray) -> float:
    """The pixel count of an (H, W, ...) array in millions."""
    return img.shape[0] * img.shape[1] / 1e6


def write_results(path: Path, results: dict[str, Any]) -> None:
    """`results` as indented JSON at `path`, its folder made if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))


def finish(results: dict[str, Any], speeds: Speeds, threads: int, out: Path) -> None:
    """Add the median speeds and the thread count to `results`, write them to `out` and print
    the speeds (the last line every timed benchmark prints)."""
    results["mp_per_s_median"] = speeds.medians()
    results["threads"] = threads
    write_results(out, results)
    print(json.dumps(results["mp_per_s_median"]))
