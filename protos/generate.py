"""Regenerate the committed Python code for the fleetflow protocol.

Runs ``grpc_tools.protoc`` over ``protos/fleetflow/api/v1/*.proto`` and writes
``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` under ``client/``, where the
proto package ``fleetflow.api.v1`` is also the Python import path, so no
import rewriting is needed.

Usage::

    python protos/generate.py            # write into client/
    python protos/generate.py --out DIR  # write elsewhere (the staleness test)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = PROTO_ROOT.parent / "client"


def generate(out: Path) -> list[Path]:
    """Run protoc and return the generated files.

    Args:
        out: Folder that receives ``fleetflow/api/v1/*``.

    Raises:
        RuntimeError: protoc reported an error.
    """
    from grpc_tools import protoc  # dev dependency, imported only here

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return sorted((out / "fleetflow" / "api" / "v1").glob("*_pb2*.py*"))


def main() -> int:
    """Command-line entry: generate into --out and print the files written."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ns = parser.parse_args()
    for path in generate(ns.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
