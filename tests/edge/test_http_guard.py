"""The HTTP port: Host check, viewer token beyond loopback, security headers, HTTPS."""

from __future__ import annotations

import base64
import ssl

import aiohttp
import pytest
from fleetflow_coordinator.dashboard import Dashboard
from fleetflow_coordinator.http_guard import SECURITY_HEADERS
from fleetflow_coordinator.runtime import Runtime
from fleetflow_coordinator.settings import Settings

from .secure import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("http"))


async def _serve(settings: Settings):
    dashboard = Dashboard(Runtime(settings))
    port = await dashboard.start("127.0.0.1:0")  # always loopback in tests
    return dashboard, port


async def test_loopback_dashboard_sends_security_headers_and_checks_the_host():
    dashboard, port = await _serve(Settings(http="127.0.0.1:0"))
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            for path in ("/", "/static/dashboard.js", "/api/overview", "/metrics", "/nope"):
                async with http.get(path) as response:
                    for name, value in SECURITY_HEADERS.items():
                        assert response.headers.get(name) == value, (path, name)
            async with http.get("/api/stream", timeout=aiohttp.ClientTimeout(total=5)) as r:
                assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
            for host, status in [("localhost:8265", 200), ("127.0.0.1", 200), ("[::1]:80", 200),
                                 ("evil.example", 421), ("evil.example:8265", 421),
                                 ("localhost.evil.example", 421)]:  # fmt: skip
                async with http.get("/api/workers", headers={"Host": host}) as response:
                    assert response.status == status, host
        # a name given with --allowed-host is answered
    finally:
        await dashboard.stop()
    dashboard, port = await _serve(Settings(http="127.0.0.1:0", allowed_hosts="ff.internal"))
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            async with http.get("/api/workers", headers={"Host": "FF.internal:8265"}) as r:
                assert r.status == 200
    finally:
        await dashboard.stop()


async def test_beyond_loopback_the_dashboard_needs_a_viewer_token_over_https(pki):
    # Served on 127.0.0.1 in the test, but configured as if bound to a LAN address.
    settings = Settings(http="10.9.8.7:8265", tls_cert=str(pki.cert), tls_key=str(pki.key),
                        auth_file=str(pki.auth_file))  # fmt: skip
    dashboard, port = await _serve(settings)
    tls = ssl.create_default_context(cafile=str(pki.ca))
    try:
        async with aiohttp.ClientSession(f"https://localhost:{port}") as http:

            async def status(headers=None, path="/api/overview"):
                async with http.get(path, headers=headers or {}, ssl=tls) as response:
                    return response.status, response.headers

            code, headers = await status()
            assert code == 401 and headers["WWW-Authenticate"].startswith("Basic")
            assert (await status({"Authorization": "Bearer nope"}))[0] == 401
            for who in ("viewer", "client", "admin"):
                token = pki.tokens[who]
                assert (await status({"Authorization": f"Bearer {token}"}))[0] == 200, who
                basic = base64.b64encode(f"anyone:{token}".encode()).decode()
                assert (await status({"Authorization": f"Basic {basic}"}, "/metrics"))[0] == 200
            worker = pki.tokens["worker"]
            assert (await status({"Authorization": f"Bearer {worker}"}))[0] == 403
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as plain:
            with pytest.raises(aiohttp.ClientError):
                async with plain.get("/api/overview") as response:
                    await response.read()
    finally:
        await dashboard.stop()
