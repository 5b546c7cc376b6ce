"""The face stage in a real flow run: detected face, user's face model, catalog and metadata."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from typer.testing import CliRunner

from daguerre.catalog import Catalog
from daguerre.cli import app
from daguerre.provenance_metadata import FACE_NOTICE
from tests.test_faces import _face_model

pytestmark = pytest.mark.flow


def test_a_configured_face_model_restores_detected_faces(
    prefect_harness, tmp_path: Path, monkeypatch
) -> None:
    source, dest = tmp_path / "masters", tmp_path / "out"
    source.mkdir()
    portrait = skimage.data.astronaut()  # one frontal face, found by the Haar detector
    cv2.imwrite(str(source / "astronaut.png"), cv2.cvtColor(portrait, cv2.COLOR_RGB2BGR))
    weights = tmp_path / "face-model.safetensors"
    weights.write_bytes(b"stand-in")
    model = _face_model(512)
    calls: list[str] = []

    def fake_load(task, source_uri, sha256=None, device="auto", **kw):
        calls.append(task)
        return model

    # Loading real GFPGAN/CodeFormer files is tested in test_loading_faces_colorize; here the
    # face model is a stand-in with an exactly known effect (it inverts the crop).
    monkeypatch.setattr("daguerre.models.loading.load_user_model", fake_load)
    catalog = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    args = ["restore", str(source), str(dest), "--catalog", catalog, "--steps", "face"]
    result = CliRunner().invoke(
        app, [*args, "--model", f"face={weights}", "--device", "cpu", "--access-format", "none"]
    )
    assert result.exit_code == 0, result.output
    assert calls == ["face"]

    history = Catalog(catalog).history(str(source / "astronaut.png"))[0]
    steps = {s.stage: s for s in history.restorations[0].steps}
    face = steps["face"]
    assert face.status == "applied" and face.reason == "1 face detected"
    assert face.operator == "user:Invert" and face.weights_sha256 == "ab" * 32
    (found,) = face.parameters["faces"]
    x, y, side, _ = found["crop"]
    assert face.parameters["model_size"] == 512 and face.metrics["faces"] == 1

    out = cv2.imread(str(dest / "astronaut.png.restored.tif"), cv2.IMREAD_UNCHANGED)
    restored = cv2.cvtColor(out, cv2.COLOR_BGR2RGB).astype(np.int16)
    changed = np.abs(restored - portrait).max(axis=2) > 0
    inside = np.zeros_like(changed)
    inside[max(0, y) : y + side, max(0, x) : x + side] = True
    assert changed[inside].mean() > 0.3 and not changed[~inside].any()
    assert Catalog(catalog).touched_by("ab" * 32)
    with open(dest / "astronaut.png.restored.tif", "rb") as f:
        assert FACE_NOTICE.encode() in f.read()
