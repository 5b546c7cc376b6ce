"""A stage that raises mid-chain fails only its image, with the reason in the catalog."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from daguerre.catalog import Catalog
from daguerre.records import RestorationStatus, StepStatus

pytestmark = pytest.mark.flow


def test_a_failing_stage_fails_only_its_images(
    prefect_harness, sample_collection: Path, tmp_path: Path, monkeypatch
) -> None:
    from daguerre import operators
    from daguerre.flows.restore import restore_collection

    def broken(self, source, params, ctx):
        raise RuntimeError("tone curve exploded")

    monkeypatch.setattr(operators.AutoTone, "prepare", broken)
    source = tmp_path / "masters"
    shutil.copytree(sample_collection, source)
    catalog_url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    Catalog(catalog_url).upgrade()

    report = restore_collection(
        source=str(source), dest=str(tmp_path / "out"), catalog_url=catalog_url
    )

    failed = [i for i in report.images if i.status == RestorationStatus.FAILED]
    succeeded = [i for i in report.images if i.status == RestorationStatus.SUCCEEDED]
    assert failed and succeeded, report.images
    for image in failed:
        assert image.error and "tone" in image.error and "exploded" in image.error
        assert not (tmp_path / "out" / f"{image.path}.restored.tif").exists()
        history = Catalog(catalog_url).history(str(source / image.path))[0]
        steps = history.restorations[-1].steps
        assert steps[-1].stage == "tone" and steps[-1].status == StepStatus.FAILED
        assert "exploded" in (steps[-1].reason or "")
        assert [s.stage for s in steps] == ["detect", "denoise", "inpaint", "face", "tone"]
    for image in succeeded:
        assert "tone" not in image.applied
        assert (tmp_path / "out" / f"{image.path}.restored.tif").is_file()
    # No intermediates are left behind by failed images either.
    assert not [p for p in (tmp_path / "out" / ".daguerre").rglob("*") if p.is_file()]
