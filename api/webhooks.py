"""Webhook endpoints, their secrets, redelivery and the delivery log (admin only).

The rules live in shared.events.webhooks; these views parse, check the tenant and answer.
"""

from __future__ import annotations

from urllib.parse import urlencode

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel

from api import schemas
from api.auth import current_principal, require_admin
from api.body import read_input, read_query
from api.links import this_url
from api.openapi import documented
from api.problems import Problem, validation_problem
from api.resources import db_session, resources
from shared.events.webhooks import (
    DeliveriesQuery,
    EndpointChange,
    EndpointInput,
    RedeliverInput,
    RotateInput,
    change_endpoint,
    create_endpoint,
    deliveries_page,
    delivery_document,
    endpoint_document,
    event_exists,
    list_endpoints,
    redeliver,
    rotate_secret,
    tenant_endpoint,
)
from shared.fields import format_timestamp
from shared.intake.validation import InvalidInput
from shared.models import WebhookEndpoint

bp = Blueprint("webhooks", __name__, url_prefix="/api/v2/webhooks")

NOT_FOUND = {404: ("No such endpoint in the caller's tenant", schemas.Problem)}


def _answer(model: BaseModel, status: int = 200) -> Response:
    response = jsonify(schemas.dump(model))
    response.status_code = status
    return response


def _endpoint(endpoint_id: str) -> WebhookEndpoint:
    """The caller's endpoint, or a 404 (read a route's body first: its limit comes first)."""
    found = tenant_endpoint(db_session(), current_principal().tenant_id, endpoint_id)
    if found is None:
        raise Problem(404, "not-found", f"no webhook endpoint {endpoint_id}")
    return found


def _limit() -> int:
    return resources().settings.max_body_bytes


def _allow_private() -> bool:
    return resources().settings.webhook_allow_private


@bp.post("/")
@documented(
    operation_id="createWebhookEndpoint",
    summary="Add a webhook endpoint; its signing secret is in this answer only",
    tag="webhooks",
    body=EndpointInput,
    responses={201: ("The endpoint, with its secret", schemas.WebhookEndpointCreated)},
)
@require_admin
def create() -> Response:
    """A new endpoint of the caller's tenant, active, with a fresh secret."""
    data = read_input(EndpointInput, _limit())
    session = db_session()
    principal = current_principal()
    try:
        endpoint = create_endpoint(
            session, principal.tenant_id, principal.user_id, data, _allow_private()
        )
    except InvalidInput as error:
        raise validation_problem(error.errors) from None
    session.commit()
    document = endpoint_document(endpoint) | {"secret": endpoint.secret}
    return _answer(schemas.WebhookEndpointCreated(**document), 201)


@bp.get("/")
@documented(
    operation_id="listWebhookEndpoints",
    summary="The tenant's webhook endpoints",
    tag="webhooks",
    responses={200: ("Every endpoint", schemas.WebhookEndpointList)},
)
@require_admin
def list_all() -> Response:
    endpoints = list_endpoints(db_session(), current_principal().tenant_id)
    results = [schemas.WebhookEndpointOut(**endpoint_document(e)) for e in endpoints]
    return _answer(schemas.WebhookEndpointList(results=results))


@bp.get("/<endpoint_id>")
@documented(
    operation_id="getWebhookEndpoint",
    summary="A webhook endpoint",
    tag="webhooks",
    responses={200: ("The endpoint", schemas.WebhookEndpointOut), **NOT_FOUND},
)
@require_admin
def read(endpoint_id: str) -> Response:
    return _answer(schemas.WebhookEndpointOut(**endpoint_document(_endpoint(endpoint_id))))


@bp.patch("/<endpoint_id>")
@documented(
    operation_id="updateWebhookEndpoint",
    summary="Change an endpoint's url, types, description or status (enable, disable)",
    tag="webhooks",
    body=EndpointChange,
    responses={200: ("The endpoint", schemas.WebhookEndpointOut), **NOT_FOUND},
)
@require_admin
def change(endpoint_id: str) -> Response:
    data = read_input(EndpointChange, _limit())
    endpoint = _endpoint(endpoint_id)
    try:
        change_endpoint(db_session(), endpoint, data, _allow_private())
    except InvalidInput as error:
        raise validation_problem(error.errors) from None
    db_session().commit()
    return _answer(schemas.WebhookEndpointOut(**endpoint_document(endpoint)))


@bp.post("/<endpoint_id>/rotate-secret")
@documented(
    operation_id="rotateWebhookSecret",
    summary="Give an endpoint a new secret; the old one also signs for `overlap_hours`",
    tag="webhooks",
    body=RotateInput,
    responses={200: ("The new secret, shown once", schemas.WebhookSecret), **NOT_FOUND},
)
@require_admin
def rotate(endpoint_id: str) -> Response:
    data = read_input(RotateInput, _limit())
    endpoint = _endpoint(endpoint_id)
    secret = rotate_secret(db_session(), endpoint, data.overlap_hours)
    db_session().commit()
    until = format_timestamp(endpoint.previous_secret_until)
    return _answer(schemas.WebhookSecret(secret=secret, previous_secret_until=until))


@bp.post("/<endpoint_id>/redeliver")
@documented(
    operation_id="redeliverWebhookEvents",
    summary="Send events again: one (`event_id`), a range (`from_id`, `to_id`) or all after "
    "one (`after`)",
    tag="webhooks",
    body=RedeliverInput,
    responses={
        200: ("How many deliveries are pending again", schemas.WebhookRedelivery),
        404: ("No such endpoint, or no such event in the tenant", schemas.Problem),
        409: ("The endpoint does not take that event's type", schemas.Problem),
    },
)
@require_admin
def redeliver_events(endpoint_id: str) -> Response:
    data = read_input(RedeliverInput, _limit())
    endpoint = _endpoint(endpoint_id)
    try:
        first, last = data.span()
    except InvalidInput as error:
        raise validation_problem(error.errors) from None
    session = db_session()
    if data.event_id is not None and not event_exists(session, endpoint.tenant_id, first):
        raise Problem(404, "not-found", f"no event {first}")
    count = redeliver(session, endpoint, first, last)
    if data.event_id is not None and count == 0:
        raise Problem(409, "conflict", f"the endpoint does not take the type of event {first}")
    session.commit()
    return _answer(schemas.WebhookRedelivery(redelivered=count))


@bp.get("/<endpoint_id>/deliveries")
@documented(
    operation_id="listWebhookDeliveries",
    summary="An endpoint's delivery log, in event order, paged by cursor",
    tag="webhooks",
    query=DeliveriesQuery,
    responses={
        200: ("A page of deliveries", schemas.WebhookDeliveryPage),
        400: ("A malformed parameter", schemas.Problem),
        **NOT_FOUND,
    },
)
@require_admin
def deliveries(endpoint_id: str) -> Response:
    endpoint = _endpoint(endpoint_id)
    query = read_query(DeliveriesQuery)
    rows, more = deliveries_page(db_session(), endpoint.id, query.after, query.limit, query.status)
    cursor = rows[-1].event_id if rows else query.after
    following = None
    if more:
        params = [(k, v) for k, v in request.args.items(multi=True) if k != "after"]
        following = this_url(urlencode([*params, ("after", str(cursor))]))
    results = [schemas.WebhookDeliveryOut(**delivery_document(row)) for row in rows]
    return _answer(schemas.WebhookDeliveryPage(results=results, next_cursor=cursor, next=following))
