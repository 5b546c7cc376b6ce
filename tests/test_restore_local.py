"""End to end on local folders and a SQLite catalog: real Prefect flow runs through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daguerre.cli import app
from tests.helpers import tree_hashes, write_bad_inputs

pytestmark = pytest.mark.flow

runner = CliRunner()


def _restore(source: Path, dest: Path, catalog: str, *extra: str):
    return runner.invoke(
        app,
        ["restore", str(source), str(dest), "--catalog", catalog, *extra],
        catch_exceptions=False,
    )


@pytest.fixture(scope="module")
def restored(prefect_harness, sample_collection: Path, tmp_path_factory):
    """The sample collection restored once; later tests read the outputs and the catalog."""
    work = tmp_path_factory.mktemp("restore-local")
    source = work / "masters"
    shutil.copytree(sample_collection, source)
    dest = work / "restored"
    catalog = f"sqlite:///{work / 'catalog.sqlite'}"
    before = tree_hashes(source)
    result = _restore(source, dest, catalog)
    return source, dest, catalog, before, result


def test_restores_every_sample(restored) -> None:
    source, dest, _catalog, before, result = restored
    assert result.exit_code == 0, result.output
    masters = [p for p in source.rglob("*") if p.is_file()]
    assert masters
    for master in masters:
        relative = master.relative_to(source)
        preservation = dest / f"{relative}.restored.tif"
        access = dest / f"{relative}.access.jpg"
        assert preservation.is_file(), f"missing {preservation}"
        assert access.is_file(), f"missing {access}"
    assert tree_hashes(source) == before, "a master was modified"
    # Intermediates are cleaned up; only derivatives remain.
    assert not [p for p in (dest / ".daguerre").rglob("*") if p.is_file()]


def test_rerun_is_idempotent(restored) -> None:
    source, dest, catalog, _before, _result = restored
    outputs_before = tree_hashes(dest)
    again = _restore(source, dest, catalog)
    assert again.exit_code == 0, again.output
    assert "already done" in again.output
    assert tree_hashes(dest) == outputs_before


def test_audit_shows_full_history(restored) -> None:
    source, dest, catalog, _before, _result = restored
    master = next(p for p in sorted(source.rglob("*")) if p.is_file())
    result = runner.invoke(app, ["audit", str(master), "--catalog", catalog, "--json"])
    assert result.exit_code == 0, result.output
    histories = json.loads(result.output)
    assert len(histories) == 1
    history = histories[0]
    restorations = history["restorations"]
    assert restorations[0]["status"] == "succeeded"
    stages = [s["stage"] for s in restorations[0]["steps"]]
    pixel = ["denoise", "inpaint", "face", "tone", "upscale", "colorize"]
    assert stages == ["detect", *pixel, "store"]
    for step in restorations[0]["steps"]:
        if step["status"] == "applied":
            assert step["operator"] and step["operator_version"]
            assert step["input_sha256"] and step["duration_s"] is not None
        else:
            assert step["status"] == "skipped" and step["reason"]
    # The same history is found from the derivative's path and from the master's sha256.
    preservation = dest / f"{master.relative_to(source)}.restored.tif"
    by_derivative = runner.invoke(app, ["audit", str(preservation), "--catalog", catalog, "--json"])
    assert json.loads(by_derivative.output)[0]["facts"]["sha256"] == history["facts"]["sha256"]
    text = runner.invoke(app, ["audit", history["facts"]["sha256"], "--catalog", catalog])
    assert text.exit_code == 0 and "detect" in text.output


def test_grayscale_sample_records_colorize_skipped(restored) -> None:
    source, _dest, catalog, _before, _result = restored
    from daguerre.catalog import Catalog

    histories = [
        h for p in source.rglob("*") if p.is_file() for h in Catalog(catalog).history(str(p))
    ]
    reasons = {
        step.reason
        for h in histories
        for r in h.restorations
        for step in r.steps
        if step.stage == "colorize"
    }
    # A colorizer ships, but colorization is an interpretation: opt-in (--steps ...,colorize).
    assert any(r and "grayscale image, colorization not enabled" in r for r in reasons), reasons


def test_denoise_model_follows_the_band_count(restored) -> None:
    source, _dest, catalog, _before, _result = restored
    from daguerre.catalog import Catalog
    from daguerre.models.registry import default_for

    colour = default_for("denoise")
    grey = default_for("denoise", in_channels=1) or colour
    assert colour is not None
    seen, grey_content = {}, set()
    for path in source.rglob("*"):
        for history in Catalog(catalog).history(str(path)) if path.is_file() else []:
            for step in history.restorations[0].steps:
                if step.stage == "detect" and step.metrics.get("colour_kind") == "grayscale":
                    grey_content.add(path.name)
                if step.stage == "denoise" and step.status == "applied":
                    seen[path.name] = step.weights_sha256
    # The one-band sample (and any grey image stored as RGB) goes to the grey model, where one
    # ships; the others to the colour one.
    assert "cameraman_grey.png" in grey_content
    assert seen["cameraman_grey.png"] == grey.weights_sha256
    for name, sha in seen.items():
        assert sha == (grey if name in grey_content else colour).weights_sha256, name
    assert set(seen) - grey_content, seen


def test_bad_inputs_are_recorded_and_the_rest_goes_on(
    prefect_harness, sample_collection: Path, tmp_path: Path
) -> None:
    source = tmp_path / "mixed"
    shutil.copytree(sample_collection, source)
    expected = write_bad_inputs(source / "broken")
    (source / "README.txt").write_text("not an image, and not named like one: ignored\n")
    dest = tmp_path / "out"
    catalog = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    result = _restore(source, dest, catalog, "--steps", "denoise,inpaint")
    assert result.exit_code == 1, result.output
    for name, fragment in expected.items():
        lines = [line for line in result.output.splitlines() if name in line and "FAILED" in line]
        assert lines, f"{name} not reported as failed:\n{result.output}"
        assert fragment.lower() in lines[0].lower(), lines[0]
    good = [p for p in sample_collection.rglob("*") if p.is_file()]
    for master in good:
        assert (dest / f"{master.relative_to(sample_collection)}.restored.tif").is_file()
    assert "README.txt" not in result.output

    from daguerre.catalog import Catalog

    for name in expected:
        histories = Catalog(catalog).history(str(source / "broken" / name))
        assert histories and histories[0].restorations[-1].status == "failed"
        assert histories[0].restorations[-1].error


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "denoise,sharpen"], "unknown step"),
        (["--scale", "3"], "scale"),
        (["--device", "tpu"], "device"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    source = tmp_path / "in"
    source.mkdir()
    result = runner.invoke(app, ["restore", str(source), str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_dest_inside_source_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    result = runner.invoke(app, ["restore", str(source), str(source / "restored")])
    assert result.exit_code == 2
    assert "inside SOURCE" in result.output


def test_missing_source_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["restore", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_identical_files_at_two_paths_have_their_own_work_areas(
    prefect_harness, tmp_path: Path, monkeypatch
) -> None:
    """Same content, two names, one run: neither image may clean away the other's work."""
    import cv2
    import numpy as np

    from daguerre.catalog import Catalog
    from daguerre.flows.restore import restore_collection
    from daguerre.records import RestorationStatus
    from daguerre.tasks import stages

    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:48, 0:64]
    smooth = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.float64)
    image = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    source = tmp_path / "masters"
    (source / "copy").mkdir(parents=True)
    cv2.imwrite(str(source / "a.png"), image)
    shutil.copyfile(source / "a.png", source / "copy" / "b.png")

    folders: set[str] = set()  # work folders the stages wrote into
    put_work_file = stages.put_work_file

    def recording_put(dest, key, path, width, height):
        folders.add(key.rsplit("/", 1)[0])
        return put_work_file(dest, key, path, width, height)

    monkeypatch.setattr(stages, "put_work_file", recording_put)
    dest = tmp_path / "out"
    catalog = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    Catalog.open(catalog)
    report = restore_collection(
        source=str(source),
        dest=str(dest),
        catalog_url=catalog,
        steps=["denoise", "tone"],
        device="cpu",
        models={"denoise": "classical"},
        access_format="none",
    )
    assert {i.path: i.status for i in report.images} == {
        "a.png": RestorationStatus.SUCCEEDED,
        "copy/b.png": RestorationStatus.SUCCEEDED,
    }, report.images
    assert (dest / "a.png.restored.tif").is_file()
    assert (dest / "copy" / "b.png.restored.tif").is_file()
    assert len(folders) == 2, folders  # one per asset, though the content is the same
    assert not [p for p in (dest / ".daguerre").rglob("*") if p.is_file()]


def test_ensemble_is_recorded_and_is_part_of_the_configuration(
    prefect_harness, sample_collection: Path, tmp_path: Path
) -> None:
    from daguerre.catalog import Catalog

    source = tmp_path / "grey"
    source.mkdir()
    shutil.copy(sample_collection / "album-1" / "cameraman_grey.png", source)
    dest, catalog = tmp_path / "out", f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    for passes in ("2", "1"):  # a different ensemble restores again (a new configuration)
        result = _restore(source, dest, catalog, "--steps", "denoise", "--ensemble", passes)
        assert result.exit_code == 0, result.output
    histories = Catalog(catalog).history(str(source / "cameraman_grey.png"))
    restorations = histories[0].restorations
    assert len(restorations) == 2
    params = [next(s for s in r.steps if s.stage == "denoise").parameters for r in restorations]
    assert sorted(p.get("ensemble", 1) for p in params) == [1, 2]
    assert _restore(source, dest, catalog, "--ensemble", "3").exit_code == 2
