"""Bulk awards: the community CSV import, the JSON/NDJSON bulk route, and batch status."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError
from sqlalchemy import func, select

from api import examples, schemas
from api.auth import current_principal, require_writer
from api.body import FORM_TYPES, JSON, body_limit, is_json, read_body, read_form, read_query
from api.links import link_to
from api.openapi import documented
from api.pagination import page
from api.problems import Problem, validation_problem
from api.resources import db_session, publisher, resources
from api.serializers import status_object
from api.structured import idempotency_key_field, idempotency_key_header
from shared.fields import Flag, format_timestamp, parse_flag
from shared.flow.dispatch import Lane
from shared.intake.bulk import (
    Stored,
    Validated,
    preview_batch,
    store_batch,
    validate_batch,
    validate_bulk_item,
    validate_csv_row,
)
from shared.intake.bulk_bodies import (
    BatchInvalid,
    ItemError,
    at_most,
    csv_rows,
    json_batch,
    json_fields,
    ndjson_items,
)
from shared.intake.idempotency import IdempotencyConflict
from shared.intake.validation import FieldError, InvalidInput, validate_idempotency_key
from shared.models import AdjustmentRequest, Batch
from shared.platform.metrics import ADJUSTMENTS_ACCEPTED
from shared.reads.query_params import PageQuery

bp = Blueprint("bulk", __name__, url_prefix="/api/v2/score")

NDJSON = "application/x-ndjson"


def _body_limit() -> int:
    """TALLY_BULK_MAX_BODY_BYTES: these routes are api.body's LARGE_BODY_ROUTES."""
    return body_limit(resources().settings, request.endpoint)


def _batch_key(derived: str | None = None) -> str:
    key = idempotency_key_header() or derived
    if key is None:
        raise validation_problem(
            [FieldError("Idempotency-Key", "required", "a bulk batch needs an idempotency key")]
        )
    try:
        return validate_idempotency_key(key) or key
    except InvalidInput as error:
        raise validation_problem(error.errors) from None


def _store(key: str, batch: Validated) -> Stored:
    """Write the batch in one transaction, then publish its accounts."""
    settings = resources().settings
    session = db_session()
    try:
        stored = store_batch(
            session,
            current_principal(),
            key,
            batch,
            settings.points_types[settings.default_points_type],
        )
        session.commit()
    except BatchInvalid as bad:
        raise _invalid(bad.errors, "index") from None
    except IdempotencyConflict as conflict:
        raise Problem(422, "idempotency-key-reused", str(conflict)) from None
    _publish(stored)
    return stored


def _publish(stored: Stored) -> None:
    if not stored.created:
        return
    ADJUSTMENTS_ACCEPTED.inc(stored.total)
    try:
        publisher().dispatchers[Lane.BULK].notify(stored.account_ids)
    except Exception:  # redis-py and kombu raise many kinds; the relay hands them on later
        current_app.logger.warning("dispatching batch %s failed; relay will retry", stored.batch_id)


def _accepted(stored: Stored, key: str, extra: dict[str, Any] | None = None) -> Response:
    body = (extra or {}) | batch_status(stored.batch_id)
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = _status_url(stored.batch_id)
    response.headers["Idempotency-Key"] = idempotency_key_field(key)
    if not stored.created:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _status_url(batch_id: str) -> str:
    return link_to("bulk.batch", batch_id=batch_id)


# An error report lists this many errors and counts the rest.
MAX_REPORTED_ERRORS = 1000


def _invalid(errors: list[ItemError], position: str) -> Problem:
    shown = errors[:MAX_REPORTED_ERRORS]
    count = "1 item is" if len(errors) == 1 else f"{len(errors)} items are"
    problem = Problem(400, "validation", f"{count} invalid; nothing was written")
    problem.extra = {
        "error_count": len(errors),
        "errors_by_item": [_item_error(e, position) for e in shown],
    }
    problem.errors = [FieldError(e.field, e.code, e.message) for e in shown]
    return problem


def _item_error(error: ItemError, position: str) -> dict[str, Any]:
    return {position: error.position, "field": error.field, "code": error.code,
            "message": error.message}  # fmt: skip


class ImportInput(BaseModel):
    """The form or JSON fields of the community import (besides `csv_file`)."""

    csv_string: str | None = None
    dry_run: bool | str | None = None


@bp.post("/import/")
@documented(
    operation_id="importScoresCsv",
    summary="Import score changes from a CSV file (community API)",
    body=ImportInput,
    body_types=(JSON, "multipart/form-data", "application/x-www-form-urlencoded"),
    headers={
        "Idempotency-Key": "The batch's key. Without one, the key is derived from the file's"
        " content (`csv-` and its SHA-256): the same file imported again is replayed, not"
        " applied twice; a file meant to be applied again needs a key of its own."
    },
    responses={
        200: ("Dry run: the report, nothing written", schemas.ImportReport),
        202: ("Imported into one batch", schemas.ImportAccepted),
        400: ("Invalid rows (nothing written) or fields", schemas.ImportProblem),
        422: ("Batch key reused with other content", schemas.Problem),
    },
)
@require_writer
def import_csv() -> Response:
    """Validate the whole file; with dry_run=false store every row in one batch."""
    field, text, raw_dry_run = _import_source()
    try:
        dry_run = True if raw_dry_run is None else parse_flag(raw_dry_run)
    except PydanticCustomError:
        raise validation_problem(
            [FieldError("dry_run", "boolean", "must be true or false")]
        ) from None
    settings = resources().settings
    try:
        rows = list(at_most(csv_rows(io.StringIO(text)), settings.bulk_max_items, field))
    except BatchInvalid as bad:
        raise _invalid_rows(bad.errors) from None
    except InvalidInput as error:
        raise validation_problem(error.errors) from None
    batch, errors = validate_batch(
        db_session(),
        current_principal().tenant_id,
        rows,
        lambda n, row: validate_csv_row(n, row, settings.max_amount),
    )
    awards = batch.awards
    bad_rows = {e.position for e in errors}
    total = sum(a.amount for a in awards if a.position not in bad_rows)
    if dry_run:
        report = {
            "total_rows": len(rows),
            "valid_rows": len(rows) - len(bad_rows),
            "invalid_rows": len(bad_rows),
            "total_points_variation": total,
            "error_count": len(errors),
            "errors": [_row_error(e) for e in errors[:MAX_REPORTED_ERRORS]],
        }
        return jsonify(report)
    if errors:
        raise _invalid_rows(errors)
    key = _batch_key("csv-" + hashlib.sha256(text.encode()).hexdigest()[:48])
    stored = _store(key, batch)
    return _accepted(
        stored,
        key,
        {
            "imported_rows": len(awards),
            "total_points_variation": total,
            "batch_id": stored.batch_id,
            "status_url": _status_url(stored.batch_id),
        },
    )


def _invalid_rows(errors: list[ItemError]) -> Problem:
    problem = Problem(400, "validation", "the file has invalid rows; nothing was written")
    problem.extra = {
        "error_count": len(errors),
        "errors": [_row_error(e) for e in errors[:MAX_REPORTED_ERRORS]],
    }
    return problem


def _row_error(error: ItemError) -> dict[str, Any]:
    return {"row_number": error.position, "field": error.field, "message": error.message}


def _import_source() -> tuple[str, str, Any]:
    """The field that holds the CSV (exactly one of csv_file or csv_string), its text, and
    the raw dry_run value."""
    if is_json(request.mimetype):
        try:
            body = json_fields(read_body(_body_limit()), ImportInput.model_fields)
        except InvalidInput as error:
            raise validation_problem(error.errors) from None
        csv_string, upload, dry_run = body.get("csv_string"), None, body.get("dry_run")
    elif request.mimetype in FORM_TYPES:
        form, files = read_form(_body_limit())
        csv_string = form.get("csv_string")
        upload = files.get("csv_file")
        dry_run = form.get("dry_run")
    else:
        raise Problem(415, "unsupported-media-type", f"send {JSON} or a form")
    if (csv_string is None) == (upload is None):
        raise validation_problem(
            [FieldError("csv_file", "required", "give exactly one of csv_file or csv_string")]
        )
    if upload is not None:
        try:
            return "csv_file", upload.decode("utf-8-sig"), dry_run
        except UnicodeDecodeError:
            raise validation_problem(
                [FieldError("csv_file", "encoding", "must be UTF-8 text")]
            ) from None
    if not isinstance(csv_string, str):
        raise validation_problem([FieldError("csv_string", "string", "must be a string")])
    return "csv_string", csv_string, dry_run


class BulkInput(BaseModel):
    """`{"items": [...]}` with batch-wide defaults, or NDJSON (one item per line)."""

    items: list[dict[str, Any]]
    reputation_context: str | None = None
    comment: str | None = None


class BulkQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    dry_run: Flag = False


@bp.post("/bulk")
@documented(
    operation_id="submitBulk",
    summary="Submit up to 100,000 adjustments as one idempotent batch",
    body=BulkInput,
    body_types=(JSON, NDJSON),
    query=BulkQuery,
    required_headers=("Idempotency-Key",),
    headers={
        "Idempotency-Key": "The batch's key; items default to key:index. An item"
        " with an `idempotency_key` of its own that an earlier request has with the same"
        " content is replayed (counted, not created again); with other content, refused."
    },
    responses={
        200: ("Dry run: what the batch would do, nothing written", schemas.BulkDryRun),
        202: ("Accepted as one batch", schemas.BatchStatus),
        400: ("Invalid items (nothing written) or fields", schemas.BulkProblem),
        422: ("Batch key reused with other content", schemas.Problem),
    },
    body_examples=examples.BULK_BODIES,
    answer_examples=examples.BULK_ANSWERS,
)
@require_writer
def bulk() -> Response:
    """Validate every item, then store them all as one batch (or say what that would do)."""
    dry_run = read_query(BulkQuery).dry_run
    key = _batch_key()
    settings = resources().settings
    try:
        defaults, items = _bulk_items(settings.bulk_max_items)
        batch, errors = validate_batch(
            db_session(),
            current_principal().tenant_id,
            items,
            lambda i, item: validate_bulk_item(i, item, defaults, settings.max_amount),
        )
    except InvalidInput as error:
        raise validation_problem(error.errors) from None
    if errors:
        raise _invalid(errors, "index")
    if not batch.awards:
        raise validation_problem([FieldError("items", "required", "give at least one item")])
    if dry_run:
        return jsonify(_dry_run(key, batch))
    return _accepted(_store(key, batch), key)


def _dry_run(key: str, batch: Validated) -> dict[str, Any]:
    """What storing the batch would create and replay; a 400 for items it would refuse."""
    settings = resources().settings
    points_type = settings.points_types[settings.default_points_type]
    try:
        plan = preview_batch(db_session(), current_principal().tenant_id, key, batch, points_type)
    except BatchInvalid as bad:
        raise _invalid(bad.errors, "index") from None
    items = len(batch.awards)
    return {"dry_run": True, "items": items, "new": len(plan.items), "replayed": plan.replayed}


def _bulk_items(limit: int) -> tuple[dict[str, Any], Iterator[tuple[int, Any]]]:
    """The body's defaults, and its (index, item)s, read one at a time as they are validated."""
    if request.mimetype not in (JSON, NDJSON):
        raise Problem(415, "unsupported-media-type", f"send {JSON} or {NDJSON}")
    data = read_body(_body_limit())
    if request.mimetype == NDJSON:
        return {}, ndjson_items(data, limit)
    return json_batch(data, limit)


def batch_status(batch_id: str) -> dict[str, Any]:
    """The batch's status object: counts per status, overall status, progress."""
    batch = db_session().get_one(Batch, batch_id)
    final = batch.completed + batch.rejected
    if final == batch.total:
        overall = "completed_with_rejections" if batch.rejected else "completed"
    else:
        overall = "processing" if final else "queued"
    counts = schemas.BatchCounts(
        queued=batch.total - final, processing=0, completed=batch.completed, rejected=batch.rejected
    )
    return schemas.BatchStatus(
        id=batch.id,
        status=overall,
        total=batch.total,
        replayed=batch.replayed,
        counts=counts,
        created_at=format_timestamp(batch.created_at) or "",
        completed_at=format_timestamp(batch.completed_at),
        progress=round(final / batch.total, 4) if batch.total else 1.0,
    ).model_dump(mode="json")


def _own_batch(batch_id: str) -> Batch:
    batch = db_session().get(Batch, batch_id)
    if batch is None or batch.tenant_id != current_principal().tenant_id:
        raise Problem(404, "not-found", f"no batch {batch_id}")
    return batch


@bp.get("/batches/<batch_id>")
@documented(
    operation_id="getBatch",
    summary="A batch's progress",
    responses={200: ("The batch", schemas.BatchStatus), 404: ("No such batch", schemas.Problem)},
)
@require_writer
def batch(batch_id: str) -> Response:
    """Counts per status, overall status, timestamps and progress of one batch."""
    _own_batch(batch_id)
    return jsonify(batch_status(batch_id))


class ItemsQuery(PageQuery):
    status: str | None = None


@bp.get("/batches/<batch_id>/items")
@documented(
    operation_id="listBatchItems",
    summary="A batch's items with their status and reasons",
    query=ItemsQuery,
    responses={
        200: ("A page of request statuses", schemas.RequestStatusPage),
        400: ("A malformed parameter", schemas.Problem),
        404: ("No such batch", schemas.Problem),
    },
)
@require_writer
def batch_items(batch_id: str) -> Response:
    """Page through a batch's requests, optionally only those of one status."""
    query = read_query(ItemsQuery)
    _own_batch(batch_id)
    session = db_session()
    scope = select(AdjustmentRequest).where(AdjustmentRequest.batch_id == batch_id)
    if query.status:
        scope = scope.where(AdjustmentRequest.status == query.status)
    count = session.scalar(select(func.count()).select_from(scope.subquery())) or 0
    rows = session.scalars(
        scope.order_by(AdjustmentRequest.id).limit(query.limit).offset(query.offset)
    )
    return jsonify(page([status_object(session, row) for row in rows], count, query))
