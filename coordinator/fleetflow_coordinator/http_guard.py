"""Protection of the coordinator's HTTP port (dashboard and ``/metrics``).

Installed on the dashboard's aiohttp application by :func:`install`:

* **Host check** (DNS rebinding): a request whose ``Host`` header is not an IP
  address, ``localhost``, this machine's own name or a name given with
  ``--allowed-host`` is refused (421), so a web page on another site cannot read
  the dashboard through a name that resolves to this machine.
* **Viewer token** beyond loopback: when the port is bound to anything but
  loopback, every request needs a token with the ``viewer``, ``client`` or
  ``admin`` role, as ``Authorization: Bearer <token>`` (Prometheus'
  ``authorization`` setting) or as the password of HTTP Basic authentication
  (what a browser prompts for; the user name is ignored). 401 otherwise.
* **Headers** on every response: a Content-Security-Policy that allows only
  the page's own script, styles and API, ``X-Frame-Options: DENY``,
  ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``.
* **HTTPS** with the coordinator's own certificate when it has one.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from fleetflow_coordinator.auth import HTTP_ROLES, AuthFile, is_loopback
from fleetflow_coordinator.errors import Unauthenticated
from fleetflow_coordinator.settings import Settings

__all__ = ["SECURITY_HEADERS", "allowed_host_names", "install", "ssl_context"]

#: Sent with every response of the HTTP port.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def allowed_host_names(settings: Settings) -> frozenset[str]:
    """Host names (lower case) the HTTP port answers to, besides IP addresses."""
    names = {"localhost", socket.gethostname(), socket.getfqdn()}
    names.update(n.strip() for n in settings.allowed_hosts.split(",") if n.strip())
    bind = settings.http.rpartition(":")[0].strip("[]")
    if bind:
        names.add(bind)
    return frozenset(n.lower().rstrip(".") for n in names if n)


def _host_allowed(host: str, names: frozenset[str]) -> bool:
    if host.startswith("["):  # [v6]:port
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        ipaddress.ip_address(host)
        return True  # an address cannot be rebound to another site
    except ValueError:
        return host.lower().rstrip(".") in names


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The HTTPS context of the HTTP port: the coordinator's certificate, or None."""
    if not (settings.tls_cert and settings.tls_key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def install(app: web.Application, settings: Settings) -> None:
    """Add the Host check, the token check and the security headers to ``app``.

    Raises:
        ValueError: the auth file named in ``settings`` is invalid.
    """
    names = allowed_host_names(settings)
    bind = settings.http.rpartition(":")[0]
    auth = AuthFile(settings.auth_file) if settings.auth_file else None
    need_token = auth is not None and not is_loopback(bind.strip("[]"))

    @web.middleware
    async def guard(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if not _host_allowed(request.host, names):
            return web.Response(
                status=421,
                text=f"Host {request.host[:100]!r} is not one this coordinator answers to; "
                "add it with --allowed-host\n",
            )
        if need_token:
            assert auth is not None
            try:
                principal = auth.table.http_principal(request.headers.get("Authorization"))
            except Unauthenticated as exc:
                return web.Response(
                    status=401,
                    text=f"{exc}\n",
                    headers={"WWW-Authenticate": 'Basic realm="fleetflow", charset="UTF-8"'},
                )
            if not principal.may(HTTP_ROLES):
                return web.Response(status=403, text=f"{principal.name} is not a viewer\n")
        return await handler(request)

    async def headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(SECURITY_HEADERS)

    app.middlewares.append(guard)
    app.on_response_prepare.append(headers)
