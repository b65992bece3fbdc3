"""The committed protobuf/gRPC code must match what protos/generate.py produces now."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_generate():
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_generated_code_is_fresh(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the dev extra")
    fresh = _load_generate().generate(tmp_path)
    assert fresh, "protoc produced nothing"
    committed_dir = ROOT / "client" / "fleetflow" / "api" / "v1"
    stale = [
        p.name for p in fresh if p.read_bytes() != (committed_dir / p.name).read_bytes()
    ]
    assert not stale, f"regenerate with `python protos/generate.py`: stale files {stale}"
    extra = {p.name for p in committed_dir.glob("*_pb2*.py*")} - {p.name for p in fresh}
    assert not extra, f"generated files without a .proto: {sorted(extra)}"
