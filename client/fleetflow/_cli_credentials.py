"""``--tls-ca``, ``--tls-cert``, ``--tls-key`` and ``--token-file`` for every client command.

The options set the ``FLEETFLOW_*`` variables that
:meth:`fleetflow.credentials.Credentials.from_options` reads, so every ``Client``
the command makes uses them without being passed along.
"""

from __future__ import annotations

import os
from typing import Any

import click

__all__ = ["credential_options"]

_OPTIONS = (
    ("--tls-ca", "FLEETFLOW_TLS_CA", "Speak TLS, verifying the coordinator against this PEM CA."),
    ("--tls-cert", "FLEETFLOW_TLS_CLIENT_CERT", "PEM client certificate (mutual TLS)."),
    ("--tls-key", "FLEETFLOW_TLS_CLIENT_KEY", "PEM private key of --tls-cert."),
    ("--token-file", "FLEETFLOW_TOKEN_FILE", "File holding a token (or set FLEETFLOW_TOKEN)."),
)


def _setter(variable: str) -> Any:
    def store(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value:
            os.environ[variable] = value

    return store


def credential_options(fn: Any) -> Any:
    """Add the credential options (each also read from its ``FLEETFLOW_*`` variable)."""
    for flag, variable, text in reversed(_OPTIONS):
        fn = click.option(
            flag,
            metavar="PATH",
            default=None,
            expose_value=False,
            callback=_setter(variable),
            help=f"{text} [env {variable}]",
        )(fn)
    return fn
