"""Fixtures of the client tests: a fake coordinator served on a real gRPC port."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest
from fleetflow import Client
from fleetflow.api.v1 import coordinator_service_pb2_grpc as pb_grpc

from .fake_coordinator import FAST, FakeCoordinator


@pytest.fixture
def fake():
    servicer = FakeCoordinator()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_CoordinatorServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.address = f"127.0.0.1:{port}"
    yield servicer
    server.stop(None)


@pytest.fixture
def client(fake):
    with Client(fake.address, backoff=FAST) as c:
        yield c
