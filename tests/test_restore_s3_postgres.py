"""End to end on the real thing: SeaweedFS S3 in and out, PostgreSQL catalog, real flow runs."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daguerre.cli import app
from daguerre.storage import open_storage, s3_client
from tests.helpers import write_bad_inputs

pytestmark = [pytest.mark.flow, pytest.mark.s3, pytest.mark.postgres]

runner = CliRunner()
BUCKET = "archive"


def _upload_tree(root: Path, prefix: str) -> dict[str, str]:
    client = s3_client()
    existing = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
    if BUCKET not in existing:
        client.create_bucket(Bucket=BUCKET)
    hashes = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(root).as_posix()}"
            data = path.read_bytes()
            client.put_object(Bucket=BUCKET, Key=key, Body=data)
            hashes[key] = hashlib.sha256(data).hexdigest()
    return hashes


def _bucket_hashes(prefix: str) -> dict[str, str]:
    client = s3_client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page.get("Contents", []):
            body = client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
            out[obj["Key"]] = hashlib.sha256(body).hexdigest()
    return out


def _count_master_gets(monkeypatch) -> Counter[str]:
    """GetObject requests for keys under in/ (the masters), whoever makes them."""
    import botocore.client

    gets: Counter[str] = Counter()
    lock = threading.Lock()
    make_api_call = botocore.client.BaseClient._make_api_call

    def counting_call(self, operation_name, api_params):
        if operation_name == "GetObject" and api_params.get("Key", "").startswith("in/"):
            with lock:
                gets[api_params["Key"]] += 1
        return make_api_call(self, operation_name, api_params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", counting_call)
    return gets


def test_s3_to_s3_with_postgres_catalog(
    prefect_harness,
    s3_endpoint: str,
    postgres_server_url: str,
    sample_collection: Path,
    tmp_path,
    monkeypatch,
) -> None:
    staging = tmp_path / "staging"
    import shutil

    shutil.copytree(sample_collection, staging)
    bad = write_bad_inputs(staging / "broken")
    masters = _upload_tree(staging, "in")
    source, dest = f"s3://{BUCKET}/in", f"s3://{BUCKET}/out"

    upgrade = runner.invoke(app, ["catalog", "upgrade", "--catalog", postgres_server_url])
    assert upgrade.exit_code == 0, upgrade.output

    result = runner.invoke(
        app,
        ["restore", source, dest, "--catalog", postgres_server_url, "--collection", "s3-e2e"],
        catch_exceptions=False,
    )
    assert result.exit_code == 1, result.output  # the broken files fail, the rest succeed
    for name in bad:
        assert any(name in line and "FAILED" in line for line in result.output.splitlines())

    # Masters untouched; a preservation and an access derivative for every good master.
    assert {k: v for k, v in _bucket_hashes("in/").items()} == masters
    outputs = _bucket_hashes("out/")
    good = [k for k in masters if not k.startswith("in/broken/")]
    for key in good:
        relative = key.removeprefix("in/")
        assert f"out/{relative}.restored.tif" in outputs
        assert f"out/{relative}.access.jpg" in outputs
    assert not [k for k in outputs if "/.daguerre/" in k]

    # The catalog knows each derivative by its sha256, and audit finds the full history.
    key = good[0]
    derivative_uri = f"{dest}/{key.removeprefix('in/')}.restored.tif"
    audit = runner.invoke(
        app, ["audit", derivative_uri, "--catalog", postgres_server_url, "--json"]
    )
    assert audit.exit_code == 0, audit.output
    history = json.loads(audit.output)[0]
    assert history["facts"]["sha256"] == masters[key]
    assert history["facts"]["source_uri"] == f"s3://{BUCKET}/{key}"
    restoration = history["restorations"][-1]
    assert restoration["status"] == "succeeded"
    assert restoration["run"]["flow_run_id"]
    store = [s for s in restoration["steps"] if s["stage"] == "store"][0]
    preservation = [d for d in restoration["derivatives"] if d["kind"] == "preservation"][0]
    assert (
        store["output_sha256"]
        == preservation["sha256"]
        == outputs[derivative_uri.removeprefix(f"s3://{BUCKET}/")]
    )

    # A second run skips everything already restored and fails only the broken ones again.
    # It reads no good master: their ETags and LastModified are those they had when inspected.
    # Masters whose inspection found an error are inspected again (a failure is never
    # trusted); truncated.jpg has a readable header (it fails in detect, which reads it from
    # the worker's master cache), so its facts are reused like a good master's.
    gets = _count_master_gets(monkeypatch)
    again = runner.invoke(
        app, ["restore", source, dest, "--catalog", postgres_server_url, "--collection", "s3-e2e"]
    )
    assert again.exit_code == 1
    assert again.output.count("already done") == len(good)
    assert set(gets) == {
        f"in/broken/{name}" for name in ("empty.jpg", "notes.tif", "unreadable.tif")
    }
    monkeypatch.undo()
    assert _bucket_hashes("out/") == outputs

    # --rehash reads every master once (a fixity check) and finds nothing changed.
    gets = _count_master_gets(monkeypatch)
    rehashed = runner.invoke(
        app,
        ["restore", source, dest, "--catalog", postgres_server_url, "--collection", "s3-e2e"]
        + ["--rehash"],
    )
    monkeypatch.undo()
    assert rehashed.exit_code == 1
    assert rehashed.output.count("already done") == len(good)
    assert gets == Counter(dict.fromkeys(masters, 1))
    from daguerre.catalog import Catalog

    fingerprints = Catalog(postgres_server_url).fingerprints(f"s3://{BUCKET}/{k}" for k in good)
    assert len(fingerprints) == len(good)
    assert all(f.version.startswith("s3:etag=") for f in fingerprints.values())

    storage = open_storage(dest)
    assert storage.exists(f"{key.removeprefix('in/')}.restored.tif")


def test_unreachable_endpoint_is_a_usage_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    result = runner.invoke(app, ["restore", "s3://nowhere/in", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
