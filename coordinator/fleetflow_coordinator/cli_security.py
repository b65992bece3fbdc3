"""``fleetflow certs`` and ``fleetflow token``: TLS certificates and credentials in a minute."""

from __future__ import annotations

from pathlib import Path

import click

from fleetflow_coordinator.auth import ROLES, append_entry, new_token
from fleetflow_coordinator.pki import LOCAL_NAMES, Authority, write_private

__all__ = ["certs_command", "token_command"]


@click.command(name="certs")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="NAME",
    help="A DNS name or IP address clients reach the coordinator by (repeatable); "
    f"{', '.join(LOCAL_NAMES)} are always included.",
)
@click.option("--worker", "workers", multiple=True, metavar="NAME", help="A worker certificate.")
@click.option("--client", "clients", multiple=True, metavar="NAME", help="A client certificate.")
@click.option("--viewer", "viewers", multiple=True, metavar="NAME", help="A viewer certificate.")
@click.option("--admin", "admins", multiple=True, metavar="NAME", help="An admin certificate.")
@click.option("--days", default=365, show_default=True, help="Validity, days.")
def certs_command(
    directory: Path,
    hosts: tuple[str, ...],
    workers: tuple[str, ...],
    clients: tuple[str, ...],
    viewers: tuple[str, ...],
    admins: tuple[str, ...],
    days: int,
) -> None:
    """Make a development CA and certificates in DIRECTORY (for real CAs see the docs).

    Writes ca.pem (give it to every worker and client: --tls-ca), coordinator.pem
    and coordinator-key.pem (--tls-cert/--tls-key), and for each --worker/--client/
    --viewer/--admin NAME a client certificate ROLE-NAME.pem with its key, whose
    name and role go into DIRECTORY/auth.toml (--auth-file). An existing CA in
    DIRECTORY is reused, so more certificates can be added later. Keys are 0600.
    """
    if days < 1:
        raise click.BadParameter("must be >= 1", param_hint="--days")
    authority = Authority(directory, days=days)
    made = [authority.ca_path] if authority.created else []
    coordinator = directory / "coordinator.pem"
    if hosts or not coordinator.exists():
        made.extend(authority.issue("coordinator", "fleetflow coordinator", hosts=hosts,
                                    server=True))  # fmt: skip
    for role, names in (("worker", workers), ("client", clients), ("viewer", viewers),
                        ("admin", admins)):  # fmt: skip
        for name in names:
            if not name or "/" in name or name.startswith("."):
                raise click.BadParameter(f"{name!r}: not a usable name", param_hint=f"--{role}")
            made.extend(authority.issue(f"{role}-{name}", name))
            append_entry(directory / "auth.toml", roles=[role], common_name=name)
    for path in made:
        click.echo(f"wrote {path}")
    if workers or clients or viewers or admins:
        click.echo(f"wrote {directory / 'auth.toml'} (certificate names and roles)")


@click.command(name="token")
@click.argument("role", type=click.Choice(ROLES))
@click.argument("name")
@click.option(
    "--auth-file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The coordinator's auth file: the token's hash is appended (created 0600).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the token here (0600) for --token-file; default: print it once.",
)
def token_command(role: str, name: str, auth_file: Path, out: Path | None) -> None:
    """Make a new token with ROLE (client, worker, viewer, admin) for NAME.

    Only the token's SHA-256 hash is stored in the auth file; several tokens may
    be valid at once (rotate by adding a new one, then deleting the old entry).
    A running coordinator notices the change within a second.
    """
    token = new_token()
    try:
        append_entry(auth_file, roles=[role], token=token, name=name)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if out is not None:
        write_private(out, (token + "\n").encode())
        click.echo(f"wrote {out} ({role} token for {name}); its hash is in {auth_file}")
    else:
        click.echo(token)
