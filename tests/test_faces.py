"""The face stage: crops around detected faces, a face model on each, soft paste-back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from daguerre.imaging.plan import PlanOptions, plan_restoration
from daguerre.imaging.tiling import ArraySink, ArraySource
from daguerre.models.loading import LoadedModel
from daguerre.models.registry import SizeRequirements
from daguerre.operators import (
    FACE_BLEND_INNER,
    MAX_FACES,
    FaceRestore,
    StageContext,
    face_blend_weight,
    face_crops,
    read_padded,
    run_operator,
)
from daguerre.provenance_metadata import FACE_NOTICE, Provenance
from daguerre.records import StepFacts, StepStatus
from tests.test_plan import _det


class _Invert(nn.Module):
    """A stand-in face model with a visible, exactly known effect."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.0 - x


def _face_model(size: int = 64) -> LoadedModel:
    module = _Invert()
    return LoadedModel(
        module=module,
        forward=lambda x, sigma, mask: module(x),
        model_id="user:Invert",
        task="face",
        architecture="Invert",
        version="user",
        scale=1,
        in_channels=3,
        out_channels=3,
        weights_sha256="ab" * 32,
        size_requirements=SizeRequirements(minimum=size),
        tiling="discouraged",
        receptive_overlap=0,
        takes_noise_level=False,
        device=torch.device("cpu"),
    )


def _image(h: int = 150, w: int = 200, c: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((h, w, c), dtype=np.float32)


def test_face_crops_are_square_centred_and_largest_first() -> None:
    crops = face_crops([[10, 10, 20, 20], [50, 40, 40, 30]])
    assert [c.box for c in crops] == [(50, 40, 40, 30), (10, 10, 20, 20)]
    big = crops[0]
    assert big.side == 80 and (big.x, big.y) == (30, 15)  # centre (70, 55)
    assert big.to_json() == {"box": [50, 40, 40, 30], "crop": [30, 15, 80, 80]}
    many = face_crops([[i, i, 4, 4] for i in range(MAX_FACES + 5)])
    assert len(many) == MAX_FACES


def test_read_padded_mirrors_outside_the_image() -> None:
    img = _image(20, 30)
    src = ArraySource(img)
    inside = read_padded(src, 5, 5, 10, 10)
    assert np.array_equal(inside, img[5:15, 5:15])
    edge = read_padded(src, -3, -2, 10, 8)
    assert edge.shape == (8, 10, 3)
    assert np.array_equal(edge[2:, 3:], img[:6, :7])
    assert np.array_equal(edge[1, 3:], img[1, :7])  # reflected (101) row above the top
    tiny = read_padded(ArraySource(img[:2, :2]), -5, -5, 12, 12)  # pads larger than the image
    assert tiny.shape == (12, 12, 3)


def test_blend_weight_is_one_in_the_middle_and_zero_in_the_corners() -> None:
    side = 100
    w = face_blend_weight(np.arange(side), np.arange(side), side)
    assert w[50, 50] == pytest.approx(1.0)
    assert w[0, 0] == pytest.approx(0.0)
    assert np.all((w >= 0) & (w <= 1))
    r = int(side / 2 * FACE_BLEND_INNER) - 2
    assert np.all(w[50, 50 - r : 50 + r] == 1.0)


@pytest.mark.parametrize("model_size", [60, 16])  # crop at model size / larger than it
def test_face_restore_changes_only_the_crops_and_tiles_match_whole(model_size: int) -> None:
    img = _image()
    op = FaceRestore(_face_model(model_size))
    assert op.id == "user:Invert" and op.weights_sha256 == "ab" * 32 and op.stage == "face"
    params = {"faces": [[60, 50, 30, 30], [180, 130, 16, 16]]}  # the second one at the edge
    whole = op.apply(img, params, StageContext())
    out = whole.pixels
    assert out.shape == img.shape and out.dtype == np.float32
    assert whole.parameters["model_size"] == model_size
    assert whole.parameters["faces"][0] == {"box": [60, 50, 30, 30], "crop": [45, 35, 60, 60]}
    outside = np.ones(img.shape[:2], bool)
    outside[35:95, 45:105] = False
    outside[122:, 172:] = False
    assert np.array_equal(out[outside], img[outside])  # untouched outside the crops
    centre = (slice(60, 70), slice(70, 80))
    if model_size >= 60:  # no resampling: the inverted face itself in the middle
        np.testing.assert_allclose(out[centre], 1.0 - img[centre], atol=1e-5)
    else:  # the face went through a 16 px model view: a blurred, inverted face
        assert np.abs(out[centre] - img[centre]).mean() > 0.2

    source = ArraySource(img)
    sink = ArraySink(img.shape[1], img.shape[0])
    run = run_operator(op, source, sink, params, StageContext(), tile=32)
    assert run.stats.tiles > 4
    np.testing.assert_allclose(sink.result(), out, atol=1 / 255)


def test_face_restore_on_grey_images() -> None:
    img = _image(c=1)
    out = FaceRestore(_face_model(60)).apply(img, {"faces": [[60, 50, 30, 30]]}, StageContext())
    assert out.pixels.shape == img.shape
    np.testing.assert_allclose(out.pixels[60:70, 70:80], 1.0 - img[60:70, 70:80], atol=1e-5)


def test_plan_runs_faces_only_with_faces_and_a_model() -> None:
    with_model = PlanOptions(face_model_available=True)
    none_found = plan_restoration(_det(faces=[]), with_model)["face"]
    assert not none_found.run and none_found.reason == "no faces detected"
    no_model = plan_restoration(_det(faces=[(1, 2, 30, 30)]), PlanOptions())["face"]
    assert not no_model.run and "no face model configured" in no_model.reason
    run = plan_restoration(_det(faces=[(1, 2, 30, 30), (100, 100, 40, 40)]), with_model)["face"]
    assert run.run and run.reason == "2 faces detected"
    assert run.params == {"faces": [[1, 2, 30, 30], [100, 100, 40, 40]]}
    off = PlanOptions(steps=frozenset({"denoise"}), face_model_available=True)
    assert plan_restoration(_det(faces=[(1, 2, 30, 30)]), off)["face"].reason == "stage not enabled"


def test_a_face_step_is_announced_in_the_derivative_metadata() -> None:
    step = StepFacts(
        stage="face",
        order=3,
        status=StepStatus.APPLIED,
        operator="user:GFPGAN",
        operator_version="user",
    )
    p = Provenance(1, "file:///m.tif", "0" * 64, 0, "tiff", (step,))
    assert FACE_NOTICE in p.summary
