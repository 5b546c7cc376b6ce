"""Session fixtures for tests on real components: Prefect, PostgreSQL, SeaweedFS (S3).

Under CI=true nothing here may skip: a missing component is an error.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Prefect state and settings in a throwaway home; no telemetry (there is no network).
_PREFECT_HOME = tempfile.mkdtemp(prefix="daguerre-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# S3 tests talk to our own SeaweedFS, which accepts any key.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "daguerre-test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "daguerre-test")
os.environ.setdefault("AWS_REGION", "us-east-1")
os.environ.pop("DAGUERRE_CATALOG_URL", None)
# The worker-local cache of S3 masters: a throwaway one, not the machine's temp folder.
os.environ["DAGUERRE_MASTER_CACHE"] = tempfile.mkdtemp(prefix="daguerre-masters-")

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API for every flow run of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for the session (server on :5432 or a private one)."""
    from tests.support.postgres import postgres_url

    with postgres_url() as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 server (SeaweedFS `weed mini`) on free loopback ports, for the session."""
    from tests.support.seaweedfs import seaweedfs_server

    workdir = tmp_path_factory.mktemp("seaweedfs")
    with seaweedfs_server(workdir) as endpoint:
        previous = os.environ.get("AWS_ENDPOINT_URL")
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        try:
            yield endpoint
        finally:
            if previous is None:
                os.environ.pop("AWS_ENDPOINT_URL", None)
            else:
                os.environ["AWS_ENDPOINT_URL"] = previous


@pytest.fixture(scope="session")
def sample_collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's sample 'old photos', made once per session (read-only by convention)."""
    from daguerre.imaging.samples import make_sample_collection

    root = tmp_path_factory.mktemp("samples")
    make_sample_collection(root, seed=0)
    return root
