"""The worker's use of fleetflow.addresses: address lists (hot standby) and the standby hint.

The rules themselves are tested in ``test_addresses.py``.
"""

from __future__ import annotations

import grpc
import pytest
from fleetflow.addresses import (
    STANDBY_PREFIX,
    Address,
    expand_dns,
    parse_addresses,
    standby_hint,
)


def test_a_comma_list_is_split_checked_and_deduplicated():
    assert [str(a) for a in parse_addresses("a:1")] == ["a:1"]
    assert [str(a) for a in parse_addresses(" a:1 , b:2,a:1 ")] == ["a:1", "b:2"]
    assert [str(a) for a in parse_addresses("[::1]:50051,127.0.0.1:7")] == [
        "[::1]:50051",
        "127.0.0.1:7",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("a:1,,b:2", "empty entry"),
        ("a", "'a' has no port"),
        (":50051", "has no host"),
        ("a:0", "'a:0': port 0 is outside 1-65535"),
        ("a:99999", "port 99999 is outside 1-65535"),
        ("a:http", "port 'http' is not a number"),
        ("[::1:5", "missing ']'"),
    ],
)
def test_a_bad_entry_is_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_addresses(text)


def test_the_standby_message_names_the_active_coordinator():
    assert standby_hint(f"{STANDBY_PREFIX}10.0.0.7:50051") == Address("10.0.0.7", 50051)
    assert standby_hint(f"{STANDBY_PREFIX}unknown") is None
    assert standby_hint("connection refused") is None and standby_hint(None) is None


def test_a_name_with_one_address_is_kept_and_localhost_lists_its_addresses():
    kept = expand_dns(parse_addresses("127.0.0.1:5,no-such-host.invalid:5"))
    assert [str(a) for a in kept] == ["127.0.0.1:5", "no-such-host.invalid:5"]
    assert all(a.port == 5 for a in expand_dns(parse_addresses("localhost:5")))


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
