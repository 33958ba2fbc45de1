"""``flask api-keys``: create (the key is shown once), list and revoke API keys."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from capabilities.runtime import runtime
from services.auth.api_keys import Scope, create_key, list_keys, revoke_key
from services.errors import NotFound

_SCOPES = [s.value for s in Scope]


def _session():
    return runtime().session()


@click.group("api-keys", help="API keys for the endpoints that need one (offer runs, real-time offers).")
def api_keys_group() -> None:
    pass


@api_keys_group.command("create", help="Create a key and print it (only this once; only its hash is stored).")
@click.option("--name", required=True, type=click.STRING, help="Who or what the key is for, e.g. 'analytics'.")
@click.option("--scope", "scopes", required=True, multiple=True, type=click.Choice(_SCOPES),
              help="A scope the key grants; repeat for several.")
@with_appcontext
def create(name: str, scopes: tuple[str, ...]) -> None:
    with _session() as session, session.begin():
        created = create_key(session, name, {Scope(s) for s in scopes})
    click.echo(created.key)
    click.echo(f"key {created.info.id} ({name}) with scopes {' '.join(created.info.scopes)}: store it now, "
               "it cannot be shown again", err=True)


@api_keys_group.command("list", help="List keys: id, name, scopes, created, revoked (never the key).")
@with_appcontext
def list_() -> None:
    with _session() as session:
        keys = list_keys(session)
    if not keys:
        click.echo("no API keys (create one with `flask api-keys create --name N --scope runs:read`)")
    for key in keys:
        revoked = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        click.echo(f"{key.id}  {key.name:<20} {' '.join(key.scopes):<28} created {key.created_at:%Y-%m-%d %H:%M}  "
                   f"{revoked}")


@api_keys_group.command("revoke", help="Revoke the key with id KEY_ID (as shown by `list`); takes effect at once.")
@click.argument("key_id", type=click.STRING)
@with_appcontext
def revoke(key_id: str) -> None:
    try:
        with _session() as session, session.begin():
            info = revoke_key(session, key_id)
    except NotFound as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"key {info.id} ({info.name}) revoked")
