"""fleetflow.addresses: the one set of rules for coordinator addresses."""

from __future__ import annotations

import pytest
from fleetflow import AsyncClient, Client
from fleetflow.addresses import (
    Address,
    InvalidAddressError,
    format_addresses,
    parse_address,
    parse_addresses,
    resolve,
    standby_hint,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:50051", Address("127.0.0.1", 50051)),
        ("  coord-a.example.com:1 ", Address("coord-a.example.com", 1)),
        ("coordinator_1:65535", Address("coordinator_1", 65535)),
        ("localhost.:50051", Address("localhost.", 50051)),
        ("[::1]:50051", Address("::1", 50051)),
        ("[0:0::1]:7", Address("::1", 7)),
    ],
)
def test_good_addresses(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("127.0.0.1:", "has no port"),
        ("127.0.0.1", "has no port"),
        ("coord", "has no port"),
        ("[::1]", "has no port"),
        (":50051", "has no host"),
        ("", "is empty"),
        ("   ", "is empty"),
        ("coord:http", "port 'http' is not a number"),
        ("coord:0", "port 0 is outside 1-65535"),
        ("coord:65536", "port 65536 is outside 1-65535"),
        ("coord:-1", "port '-1' is not a number"),
        ("::1:50051", "IPv6 address in brackets"),
        ("[::1:50051", "missing ']'"),
        ("[nope]:1", "'[nope]' is not an IPv6 address"),
        ("http://coord:50051", "no scheme or path"),
        ("coord:50051/x", "no scheme or path"),
        ("bad host:1", "is not a host name"),
        ("-coord:1", "is not a host name"),
        ("a..b:1", "is not a host name"),
        ("256.1.1.1:1", "is not an IPv4 address"),
        ("x" * 64 + ":1", "is not a host name"),
    ],
)
def test_bad_addresses_name_the_address_and_the_rule(text, rule):
    with pytest.raises(InvalidAddressError, match="coordinator address") as info:
        parse_address(text)
    assert rule in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_list_keeps_its_order_once_each():
    addresses = parse_addresses("b:2, a:1,[::1]:3,b:2")
    assert addresses == (Address("b", 2), Address("a", 1), Address("::1", 3))
    assert format_addresses(addresses) == "b:2,a:1,[::1]:3"
    listed = parse_addresses(["b:2,a:1", "c:3"])
    assert listed == (Address("b", 2), Address("a", 1), Address("c", 3))


@pytest.mark.parametrize("text", ["a:1,", ",a:1", "a:1,,b:2"])
def test_a_list_with_an_empty_entry_is_refused(text):
    with pytest.raises(InvalidAddressError, match="empty entry"):
        parse_addresses(text)


def test_a_list_of_nothing_is_empty():
    for text in [",", " , ", ""]:
        with pytest.raises(InvalidAddressError, match="is empty"):
            parse_addresses(text)


def test_a_bad_entry_in_a_list_is_named():
    with pytest.raises(InvalidAddressError, match="'b:' has no port"):
        parse_addresses("a:1,b:")


def test_addresses_print_as_written():
    assert str(Address("::1", 5)) == "[::1]:5"
    assert str(Address("coord", 5)) == "coord:5"
    assert Address("127.0.0.1", 5).is_ip and not Address("coord", 5).is_ip


def test_resolve():
    ip = Address("127.0.0.1", 5)
    assert resolve(ip) == (ip,)
    assert Address("127.0.0.1", 5) in resolve(Address("localhost", 5))
    with pytest.raises(OSError):
        resolve(Address("no-such-host.invalid", 5))


def test_standby_hint():
    assert standby_hint("standby coordinator; the active one is 10.0.0.2:50051") == Address(
        "10.0.0.2", 50051
    )
    assert standby_hint("standby coordinator; the active one is [::1]:7.") == Address("::1", 7)
    assert standby_hint("standby coordinator") is None
    assert standby_hint("restarting") is None
    assert standby_hint("standby coordinator; the active one is unknown") is None


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_clients_check_their_address_and_settings_at_once(cls):
    with pytest.raises(InvalidAddressError, match="has no port"):
        cls("127.0.0.1:")
    with pytest.raises(ValueError, match="connect_timeout_s"):
        cls("127.0.0.1:1", connect_timeout_s=0)
    with pytest.raises(ValueError, match="connect_timeout_s"):
        cls("127.0.0.1:1", connect_timeout_s=float("nan"))
    client = cls("a:1, b:2")
    assert client.addresses == (Address("a", 1), Address("b", 2))
