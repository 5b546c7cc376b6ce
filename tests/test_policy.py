"""A collection's policy file: parsing, precedence under command-line options, a real run."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from daguerre.cli import app
from daguerre.policy import POLICY_FILE, PolicyError, merged_options, parse_policy

GOOD = b"""
collection = "Glass negatives"

[restore]
steps = ["tone", "denoise"]
scale = 1
ensemble = 8
access_format = "none"
pyramid = true

[models]
denoise = "classical"
"""


def test_a_policy_parses_and_is_pinned_by_its_hash() -> None:
    policy = parse_policy(GOOD, "file:///c/daguerre.toml")
    assert policy.collection == "Glass negatives"
    assert policy.restore.steps == ("denoise", "tone")  # pipeline order
    assert policy.restore.scale == 1 and policy.restore.pyramid is True
    assert policy.restore.ensemble == 8
    assert policy.models == {"denoise": "classical"}
    assert policy.reference()["uri"] == "file:///c/daguerre.toml"
    assert len(policy.reference()["sha256"]) == 64
    everything = parse_policy(b'[restore]\nsteps = "all"\n', "p")
    assert "colorize" in (everything.restore.steps or ())


@pytest.mark.parametrize(
    "body, message",
    [
        (b"[restore\n", "not valid TOML"),
        (b"[restore]\nsteps = ['sharpen']\n", "unknown step"),
        (b"[restore]\nscale = 3\n", "restore.scale"),
        (b"[restore]\nensemble = 3\n", "restore.ensemble"),
        (b"[restore]\ncolour = true\n", "restore.colour"),
        (b"[models]\nsharpen = 'x.pth'\n", "unknown model task"),
        (b"owner = 'me'\n", "owner"),
    ],
)
def test_bad_policies_are_refused_naming_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(PolicyError, match=message) as err:
        parse_policy(body, "s3://bucket/c/daguerre.toml")
    assert str(err.value).startswith("s3://bucket/c/daguerre.toml: ")


def test_command_line_options_override_the_policy() -> None:
    policy = parse_policy(GOOD, "p")
    given = {"steps": ["denoise"], "scale": None, "access_format": None, "pyramid": False}
    out = merged_options(policy, given, {"face": "gfpgan.pth"})
    assert out["steps"] == ["denoise"] and out["pyramid"] is False  # given wins
    assert out["scale"] == 1 and out["access_format"] == "none"  # from the policy
    assert out["collection"] == "Glass negatives"
    assert out["models"] == {"denoise": "classical", "face": "gfpgan.pth"}
    assert merged_options(None, given, {}) == {"steps": ["denoise"], "pyramid": False, "models": {}}


@pytest.mark.flow
def test_a_run_applies_the_collections_policy(prefect_harness, tmp_path: Path) -> None:
    source, dest = tmp_path / "masters", tmp_path / "out"
    source.mkdir()
    rng = np.random.default_rng(0)
    img = (rng.random((48, 64, 3)) * 120 + 60).astype(np.uint8)  # low contrast: tone runs
    cv2.imwrite(str(source / "print.png"), img)
    (source / POLICY_FILE).write_bytes(GOOD)
    catalog = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    runner = CliRunner()

    result = runner.invoke(app, ["restore", str(source), str(dest), "--catalog", catalog])
    assert result.exit_code == 0, result.output
    assert "Policy:" in result.output
    assert (dest / "print.png.restored.tif").exists()
    assert sorted(p.name for p in dest.iterdir() if p.is_file()) == ["print.png.restored.tif"]
    assert not (dest / f"{POLICY_FILE}.restored.tif").exists()  # not an image: ignored
    engine = create_engine(catalog)
    with engine.connect() as conn:
        config, name = conn.execute(
            text("SELECT r.config, c.name FROM runs r JOIN collections c ON c.id = r.collection_id")
        ).one()
    config = json.loads(config) if isinstance(config, str) else config
    assert name == "Glass negatives"
    assert config["steps"] == ["denoise", "tone"] and config["scale"] == 1
    assert config["models"] == {"denoise": "classical"}
    assert config["policy"]["uri"].endswith(POLICY_FILE) and len(config["policy"]["sha256"]) == 64

    # A scheduled deployment calls the flow itself: it finds and applies the policy too.
    from daguerre.flows.restore import restore_collection

    report = restore_collection(str(source), str(dest), catalog_url=catalog)
    assert [i.status.value for i in report.images] == ["skipped"]  # same configuration: done
    with engine.connect() as conn:
        latest = conn.execute(text("SELECT config FROM runs ORDER BY id DESC")).first()[0]
    latest = json.loads(latest) if isinstance(latest, str) else latest
    assert latest["policy"] == config["policy"] and latest["steps"] == ["denoise", "tone"]

    (source / POLICY_FILE).write_bytes(b"[restore]\nscale = 3\n")
    bad = runner.invoke(app, ["restore", str(source), str(dest), "--catalog", catalog])
    assert bad.exit_code == 2 and "invalid policy" in bad.output and "scale" in bad.output
    ignored = runner.invoke(
        app, ["restore", str(source), str(dest), "--catalog", catalog, "--policy", "none"]
    )
    assert ignored.exit_code == 0, ignored.output
