"""Coordinator address lists (several coordinators: hot standby) and the standby hint."""

from __future__ import annotations

import grpc
import pytest
from fleetflow._address import STANDBY_PREFIX, active_hint, expand_dns, parse_addresses


def test_a_comma_list_is_split_checked_and_deduplicated():
    assert parse_addresses("a:1") == ["a:1"]
    assert parse_addresses(" a:1 , b:2,a:1 ") == ["a:1", "b:2"]
    assert parse_addresses("[::1]:50051,127.0.0.1:7") == ["[::1]:50051", "127.0.0.1:7"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "got nothing"),
        ("a:1,,b:2", "empty entry"),
        ("a", "'a': expected HOST:PORT"),
        (":50051", "expected HOST:PORT"),
        ("a:0", "'a:0': the port must be 1..65535"),
        ("a:99999", "the port must be"),
        ("a:http", "the port must be"),
        ("[::1:5", "unbalanced brackets"),
    ],
)
def test_a_bad_entry_is_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_addresses(text)


def test_the_standby_message_names_the_active_coordinator():
    assert active_hint(f"{STANDBY_PREFIX}10.0.0.7:50051") == "10.0.0.7:50051"
    assert active_hint(f"{STANDBY_PREFIX}unknown") is None
    assert active_hint("connection refused") is None and active_hint(None) is None


def test_a_name_with_one_address_is_kept_and_localhost_lists_its_addresses():
    assert expand_dns(["127.0.0.1:5", "no-such-host.invalid:5"]) == [
        "127.0.0.1:5",
        "no-such-host.invalid:5",
    ]
    assert all(a.endswith(":5") for a in expand_dns(["localhost:5"]))


class _Failure(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_a_worker_follows_the_standby_hint_and_moves_only_once_per_failure():
    from fleetflow_worker._rpc import CoordinatorConnection

    conn = CoordinatorConnection("127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", [])
    assert conn.address == "127.0.0.1:1"
    gen = conn.generation
    conn.failed(gen, _Failure(grpc.StatusCode.UNAVAILABLE, f"{STANDBY_PREFIX}127.0.0.1:3"))
    assert conn.address == "127.0.0.1:3"
    conn.failed(gen, _Failure(grpc.StatusCode.UNAVAILABLE, "refused"))  # an older call
    assert conn.address == "127.0.0.1:3"
    conn.failed(conn.generation, _Failure(grpc.StatusCode.INVALID_ARGUMENT, "bad"))
    assert conn.address == "127.0.0.1:3"
    conn.failed(conn.generation, _Failure(grpc.StatusCode.DEADLINE_EXCEEDED, "frozen?"))
    assert conn.address == "127.0.0.1:1"
    single = CoordinatorConnection("127.0.0.1:1", [])
    single.failed(0, _Failure(grpc.StatusCode.UNAVAILABLE, "refused"))
    assert single.address == "127.0.0.1:1"
