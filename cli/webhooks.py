"""`tally webhooks add|list|disable|enable|redeliver`: webhook endpoints, from the command line."""

from __future__ import annotations

import click
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from cli.common import Failure, database, emit, json_option
from cli.database import user_named
from shared.events.webhooks import (
    EndpointChange,
    EndpointInput,
    RedeliverInput,
    change_endpoint,
    create_endpoint,
    endpoint_document,
    list_endpoints,
    redeliver,
    tenant_endpoint,
)
from shared.intake.validation import InvalidInput
from shared.models import DEFAULT_TENANT, Role, User, WebhookEndpoint
from shared.platform.config import load_settings

tenant_option = click.option("--tenant", default=DEFAULT_TENANT, show_default=True)


@click.group()
def webhooks() -> None:
    """Webhook endpoints: signed deliveries of the tenant's events (docs/events.md)."""


def _refused(error: InvalidInput | ValidationError) -> Failure:
    if isinstance(error, ValidationError):
        fields = [(".".join(map(str, e["loc"])), e["msg"]) for e in error.errors()]
    else:
        fields = [(e.field, e.message) for e in error.errors]
    return Failure("; ".join(f"{field}: {message}" for field, message in fields), "validation")


def _owner(session: Session, tenant: str, username: str | None) -> User:
    if username is not None:
        return user_named(session, tenant, username)
    query = select(User).where(User.tenant_id == tenant, User.role == Role.ADMIN)
    admin = session.scalars(query.order_by(User.id)).first()
    if admin is None:
        raise Failure(f"tenant {tenant!r} has no admin; name one with --by")
    return admin


def _endpoint(session: Session, tenant: str, endpoint_id: str) -> WebhookEndpoint:
    endpoint = tenant_endpoint(session, tenant, endpoint_id)
    if endpoint is None:
        raise Failure(f"no webhook endpoint {endpoint_id} in tenant {tenant!r}", "not_found")
    return endpoint


@webhooks.command()
@click.option("--url", required=True, help="where to POST the events (http or https)")
@click.option("--type", "types", multiple=True, help="an event type to send (repeat; none: all)")
@click.option("--description", default="")
@click.option("--by", "username", help="the owning user (default: the tenant's first admin)")
@tenant_option
@json_option
def add(
    url: str,
    types: tuple[str, ...],
    description: str,
    username: str | None,
    tenant: str,
    as_json: bool,
) -> None:
    """Add an endpoint; its signing secret is shown this once."""
    settings = load_settings()
    try:
        data = EndpointInput(url=url, types=list(types), description=description)
        with database() as session:
            owner = _owner(session, tenant, username)
            endpoint = create_endpoint(
                session, tenant, owner.id, data, settings.webhook_allow_private
            )
            shown = endpoint_document(endpoint) | {"secret": endpoint.secret}
    except (InvalidInput, ValidationError) as error:
        raise _refused(error) from None
    emit(
        as_json,
        shown,
        lambda: f"endpoint {shown['id']} -> {url}\nsecret (shown once): {shown['secret']}",
    )


@webhooks.command("list")
@tenant_option
@json_option
def list_command(tenant: str, as_json: bool) -> None:
    """The tenant's endpoints."""
    with database() as session:
        shown = [endpoint_document(endpoint) for endpoint in list_endpoints(session, tenant)]

    def lines() -> str:
        return "\n".join(
            f"{e['id']} {e['status']:8} {e['url']} {','.join(e['types']) or '*'}" for e in shown
        )

    emit(as_json, {"endpoints": shown}, lines)


def _set_status(endpoint_id: str, tenant: str, status: str, as_json: bool) -> None:
    settings = load_settings()
    with database() as session:
        endpoint = _endpoint(session, tenant, endpoint_id)
        change = EndpointChange(status=status)  # type: ignore[arg-type]
        change_endpoint(session, endpoint, change, settings.webhook_allow_private)
        shown = endpoint_document(endpoint)
    emit(as_json, shown, lambda: f"endpoint {endpoint_id} is {status}")


@webhooks.command()
@click.argument("endpoint_id")
@tenant_option
@json_option
def disable(endpoint_id: str, tenant: str, as_json: bool) -> None:
    """Disable an endpoint: nothing is sent to it, and new events are not queued for it."""
    _set_status(endpoint_id, tenant, "disabled", as_json)


@webhooks.command()
@click.argument("endpoint_id")
@tenant_option
@json_option
def enable(endpoint_id: str, tenant: str, as_json: bool) -> None:
    """Enable an endpoint again: its pending deliveries go on."""
    _set_status(endpoint_id, tenant, "active", as_json)


@webhooks.command("redeliver")
@click.argument("endpoint_id")
@click.option("--event-id", type=int, help="one event")
@click.option("--from-id", type=int, help="the first of a range of event ids")
@click.option("--to-id", type=int, help="the last of a range of event ids")
@click.option("--after", type=int, help="every event after this id")
@tenant_option
@json_option
def redeliver_command(
    endpoint_id: str,
    event_id: int | None,
    from_id: int | None,
    to_id: int | None,
    after: int | None,
    tenant: str,
    as_json: bool,
) -> None:
    """Send events again: their deliveries go back to pending, attempts reset."""
    try:
        span = RedeliverInput(event_id=event_id, from_id=from_id, to_id=to_id, after=after).span()
    except (InvalidInput, ValidationError) as error:
        raise click.UsageError(str(_refused(error).message)) from None
    with database() as session:
        count = redeliver(session, _endpoint(session, tenant, endpoint_id), *span)
    emit(as_json, {"redelivered": count}, lambda: f"{count} deliveries pending again")
