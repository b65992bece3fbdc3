"""``python -m fleetflow_coordinator.probe``: ask a coordinator's gRPC health service.

For liveness and readiness probes where Kubernetes' native gRPC probe cannot be
used because the coordinator speaks TLS (the kubelet's gRPC probe has no TLS).
It calls the standard ``grpc.health.v1.Health/Check`` for the overall service
(``""``), which needs no token, and exits 0 when the answer is SERVING, 1 when
it is anything else, and 2 when the coordinator cannot be reached in time.

Usage::

    python -m fleetflow_coordinator.probe [ADDRESS] [--tls-ca PATH]
        [--server-name NAME] [--timeout SECONDS]

``ADDRESS`` defaults to ``127.0.0.1:50051``. ``--server-name`` is the name to
verify in the certificate (the Service's name), so the certificate need not
name the loopback address the probe dials.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run one health check; return the exit status (0 SERVING, 1 not, 2 unreachable)."""
    parser = argparse.ArgumentParser(prog="python -m fleetflow_coordinator.probe")
    parser.add_argument("address", nargs="?", default="127.0.0.1:50051")
    parser.add_argument("--tls-ca", help="PEM CA bundle: speak TLS and verify against it.")
    parser.add_argument("--server-name", help="Name to verify in the coordinator's certificate.")
    parser.add_argument("--timeout", type=float, default=3.0, help="Seconds (default 3).")
    args = parser.parse_args(argv)

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    if args.tls_ca:
        with open(args.tls_ca, "rb") as fh:
            credentials = grpc.ssl_channel_credentials(root_certificates=fh.read())
        channel = grpc.secure_channel(args.address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(args.address)
    with channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"{args.address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 2
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    if answer.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"{args.address}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
