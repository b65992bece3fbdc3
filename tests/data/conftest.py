"""Fixtures for the result store's tests: backends, a local S3-compatible server."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

#: Credentials moto accepts; real ones are never needed (traffic stays on 127.0.0.1).
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session")
def s3_server():
    """``(endpoint_url, env)`` of a moto server started for this test session."""
    pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")
    pytest.importorskip("s3fs", reason="s3fs is in the dev extra")
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("s3server.py"))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.isdigit(), f"moto server did not start: {line!r}"
        saved = {k: os.environ.get(k) for k in S3_ENV}
        os.environ.update(S3_ENV)
        try:
            yield f"http://127.0.0.1:{line}", dict(S3_ENV)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        proc.stdin.close()
        proc.stdout.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server):
    """``(url, options)`` of a fresh bucket on the test S3 server."""
    import s3fs

    endpoint, _ = s3_server
    bucket = f"ff-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    fs.mkdir(bucket)
    yield f"s3://{bucket}/fleetflow", {"endpoint_url": endpoint}
    fs.rm(bucket, recursive=True)


@pytest.fixture(params=["local", "memory", "s3"])
def object_store(request, tmp_path):
    """An ObjectStore on each backend (one contract suite runs over all of them)."""
    from fleetflow.store import ObjectStore

    if request.param == "local":
        yield ObjectStore(str(tmp_path / "results"))
    elif request.param == "memory":
        root = f"memory://ff-{uuid.uuid4().hex}"
        store = ObjectStore(root)
        yield store
        with contextlib.suppress(FileNotFoundError):
            store.fs.rm(store.root, recursive=True)
    else:
        url, options = request.getfixturevalue("s3_bucket")
        yield ObjectStore(url, options)
