"""Coordinator addresses: parse, validate and resolve ``HOST:PORT[,HOST:PORT...]``.

One set of rules for everything that dials a coordinator: :class:`~fleetflow.Client`,
:class:`~fleetflow.AsyncClient`, the ``fleetflow`` CLI's ``--coordinator`` and
the worker (``fleetflow_worker`` imports this module). An address is
``HOST:PORT`` with a port from 1 to 65535; HOST is a DNS name, an IPv4 address
or an IPv6 address in brackets (``[::1]:50051``). Several coordinators (an
active one and hot standbys) are written as a comma list, ``A:50051,B:50051``;
a DNS name that resolves to several addresses counts as all of them. A standby
answers every call with ``UNAVAILABLE`` and a message that names the active
coordinator (:func:`standby_hint` reads it), and a caller then moves on to
another address.

Example::

    >>> parse_addresses("coord-a:50051, [::1]:50052")
    (Address(host='coord-a', port=50051), Address(host='::1', port=50052))
    >>> parse_address("127.0.0.1:")
    Traceback (most recent call last):
      ...
    fleetflow.errors.InvalidAddressError: coordinator address '127.0.0.1:' has no port: ...
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from fleetflow.errors import InvalidAddressError

__all__ = [
    "Address",
    "InvalidAddressError",
    "STANDBY_MESSAGE",
    "STANDBY_PREFIX",
    "expand_dns",
    "format_addresses",
    "parse_address",
    "parse_addresses",
    "resolve",
    "standby_hint",
]

#: How a standby coordinator's ``UNAVAILABLE`` message starts; the active
#: coordinator's ``HOST:PORT`` follows when the standby knows it:
#: ``"standby coordinator; the active one is HOST:PORT"``.
STANDBY_MESSAGE = "standby coordinator"
#: The whole prefix a standby writes before the active coordinator's address.
STANDBY_PREFIX = "standby coordinator; the active one is "

_EXAMPLE = "write HOST:PORT, e.g. 127.0.0.1:50051"
# RFC 1123 labels; underscores are accepted too (compose and some DNS setups use them).
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_HINT = re.compile(re.escape(STANDBY_MESSAGE) + r".*?the active one is\s+(\S+?)[.;,]?(\s|$)")


@dataclass(frozen=True, slots=True)
class Address:
    """One coordinator address.

    Attributes:
        host: A DNS name, or an IPv4 or IPv6 address (without brackets).
        port: TCP port, 1-65535.
    """

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_ip(self) -> bool:
        """Whether the host is an IP address (no name to resolve)."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def _check_host(host: str, text: str, what: str) -> str:
    if host.startswith("[") or host.endswith("]"):
        inner = host.removeprefix("[").removesuffix("]")
        try:
            return str(ipaddress.IPv6Address(inner))
        except ValueError:
            raise InvalidAddressError(f"{what} {text!r}: {host!r} is not an IPv6 address") from None
    if ":" in host:
        raise InvalidAddressError(
            f"{what} {text!r}: write an IPv6 address in brackets, e.g. [::1]:50051"
        )
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    name = host.removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InvalidAddressError(
            f"{what} {text!r}: {host!r} is not a host name (letters, digits, '-', '.'; "
            "labels of 1-63 characters) nor an IP address"
        )
    if all(label.isdigit() for label in labels):
        raise InvalidAddressError(f"{what} {text!r}: {host!r} is not an IPv4 address")
    return host


def parse_address(text: str, *, what: str = "coordinator address") -> Address:
    """Parse and check one ``HOST:PORT``.

    Args:
        text: The address as written, e.g. ``"127.0.0.1:50051"``, ``"coord:50051"``
            or ``"[::1]:50051"``. Surrounding whitespace is ignored.
        what: What the address is, for error messages.

    Returns:
        The address (an IPv4 or IPv6 host in its normal form).

    Raises:
        InvalidAddressError: the text is not ``HOST:PORT`` with a port from 1
            to 65535 (no scheme, no path, no missing port); the message names
            the address and the rule it breaks.
    """
    raw = text
    text = text.strip()
    if not text:
        raise InvalidAddressError(f"{what} is empty: {_EXAMPLE}")
    if "://" in text or "/" in text:
        raise InvalidAddressError(
            f"{what} {raw!r} is not HOST:PORT (no scheme or path): {_EXAMPLE}"
        )
    if text.startswith("["):
        host, bracket, rest = text.partition("]")
        if not bracket:
            raise InvalidAddressError(f"{what} {raw!r}: missing ']' after the IPv6 address")
        host += "]"
        if not rest.startswith(":"):
            raise InvalidAddressError(f"{what} {raw!r} has no port: {_EXAMPLE}")
        port_text = rest[1:]
    else:
        if ":" not in text:
            raise InvalidAddressError(f"{what} {raw!r} has no port: {_EXAMPLE}")
        host, _, port_text = text.rpartition(":")
        if ":" in host:
            raise InvalidAddressError(
                f"{what} {raw!r}: write an IPv6 address in brackets, e.g. [::1]:50051"
            )
    if not host:
        raise InvalidAddressError(f"{what} {raw!r} has no host: {_EXAMPLE}")
    if not port_text:
        raise InvalidAddressError(f"{what} {raw!r} has no port: {_EXAMPLE}")
    if not port_text.isdigit():
        raise InvalidAddressError(f"{what} {raw!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise InvalidAddressError(f"{what} {raw!r}: port {port} is outside 1-65535")
    return Address(_check_host(host, raw, what), port)


def parse_addresses(
    text: str | Iterable[str], *, what: str = "coordinator address"
) -> tuple[Address, ...]:
    """Parse a comma list of ``HOST:PORT`` (or several such strings), in order.

    Args:
        text: ``"A:P"``, ``"A:P,B:P"``, or an iterable of such strings.
        what: What the addresses are, for error messages.

    Returns:
        The addresses in the order given, each once.

    Raises:
        InvalidAddressError: an entry is empty or not ``HOST:PORT``, or there
            is none.
    """
    parts = text.split(",") if isinstance(text, str) else [p for t in text for p in t.split(",")]
    if not "".join(parts).strip():
        raise InvalidAddressError(f"{what} is empty: {_EXAMPLE}")
    addresses: list[Address] = []
    for part in parts:
        if not part.strip():
            whole = text if isinstance(text, str) else ",".join(text)
            raise InvalidAddressError(f"{what} list {whole!r} has an empty entry: {_EXAMPLE}")
        address = parse_address(part, what=what)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise InvalidAddressError(f"{what} is empty: {_EXAMPLE}")
    return tuple(addresses)


def format_addresses(addresses: Iterable[Address]) -> str:
    """The comma list :func:`parse_addresses` reads back."""
    return ",".join(str(a) for a in addresses)


def resolve(address: Address) -> tuple[Address, ...]:
    """The IP addresses ``address`` stands for, in the resolver's order, each once.

    An IP address stands for itself. This blocks on the system resolver
    (``getaddrinfo``), which has no timeout of its own: async callers run it in
    a thread (``asyncio.to_thread``) and bound the wait.

    Raises:
        OSError: the name does not resolve (``socket.gaierror``).
    """
    if address.is_ip:
        return (address,)
    infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    found: list[Address] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = Address(str(ipaddress.ip_address(sockaddr[0])), address.port)
        if ip not in found:
            found.append(ip)
    return tuple(found)


def expand_dns(addresses: Iterable[Address]) -> tuple[Address, ...]:
    """Replace each name that resolves to several addresses by one entry per address.

    What the worker dials: a name with a single address is kept as written
    (TLS checks that name), and so is one that does not resolve (connecting
    reports the error). The client resolves every name itself instead (one
    channel per address, the name sent as ``:authority``).
    """
    out: list[Address] = []
    for address in addresses:
        try:
            found = resolve(address)
        except (OSError, UnicodeError):
            found = ()
        for entry in found if len(found) > 1 else (address,):
            if entry not in out:
                out.append(entry)
    return tuple(out)


def standby_hint(details: str | None) -> Address | None:
    """The active coordinator a standby's ``UNAVAILABLE`` message names, if any.

    Args:
        details: The status message of an ``UNAVAILABLE`` answer.

    Returns:
        The address after "the active one is" in a message that starts with
        :data:`STANDBY_MESSAGE`, or None (not a standby, or it did not say).
    """
    match = _HINT.search(details or "")
    if match is None:
        return None
    try:
        return parse_address(match.group(1))
    except InvalidAddressError:
        return None
