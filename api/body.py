"""Reading request bodies (JSON, forms, NDJSON) within their limit, and the RFC 7240 Prefer header.

Every body goes through `read_body`, which enforces the route's byte limit however
the body is framed: werkzeug cuts a chunked body at `max_content_length` without a
word, so tally never lets werkzeug read a body itself. Served by granian, the body
was read already, on the event loop, by api.front: `read_body` takes it from the
ASGI scope, and a body the front could not read is refused here, before anything
else is done for the request, in the route's own error format.
"""

from __future__ import annotations

import enum
import io
import json
from dataclasses import dataclass
from typing import Any

from flask import Flask, g, request
from werkzeug.datastructures import MultiDict
from werkzeug.formparser import FormDataParser

from api.problems import Problem, validation_problem
from shared.intake.validation import FieldError, InvalidInput, Model, parse_input
from shared.platform.config import Settings

JSON = "application/json"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
READ_SIZE = 64 * 1024


# The routes that take large bodies (TALLY_BULK_MAX_BODY_BYTES); every other route's
# limit is TALLY_MAX_BODY_BYTES.
LARGE_BODY_ROUTES = frozenset({"bulk.import_csv", "bulk.bulk"})
# Where api.front leaves the body it read, or why it could not read it.
BODY = "tally.body"
BODY_ERROR = "tally.body_error"


class BodyError(enum.Enum):
    TOO_LARGE = "too_large"
    TOO_SLOW = "too_slow"


def body_limit(settings: Settings, endpoint: str | None) -> int:
    """The largest body the route takes, in bytes."""
    if endpoint in LARGE_BODY_ROUTES:
        return settings.bulk_max_body_bytes
    return settings.max_body_bytes


def too_large(limit: int, headers: dict[str, str] | None = None) -> Problem:
    return Problem(
        413, "content-too-large", f"the body is larger than {limit} bytes", headers=headers
    )


def refuse_unread_bodies(app: Flask, settings: Settings) -> None:
    """Answer a request whose body the front could not read, and close its connection."""

    @app.before_request
    def _refuse() -> None:
        error = request.environ.get("asgi.scope", {}).get(BODY_ERROR)
        close = {"Connection": "close"}  # the rest of the body was never read
        if error is BodyError.TOO_LARGE:
            raise too_large(body_limit(settings, request.endpoint), close)
        if error is BodyError.TOO_SLOW:
            raise Problem(408, "request-timeout", "the body arrived too slowly", headers=close)


def read_body(limit: int) -> bytes:
    """The whole body (Content-Length or chunked); a 413 if it is longer than `limit` bytes."""
    if "body" in g:
        body: bytes = g.body
        return body
    read: bytes | None = request.environ.get("asgi.scope", {}).get(BODY)
    if read is not None:
        if len(read) > limit:
            raise too_large(limit)
        g.body = read
        return read
    length = request.content_length
    if length is not None and length > limit:
        raise too_large(limit)
    stream = request.environ["wsgi.input"]
    # Without a length the server must have ended the stream itself (chunked framing);
    # otherwise reading would wait for a client that has nothing more to send.
    if length is None and not request.environ.get("wsgi.input_terminated"):
        length = 0
    wanted = limit + 1 if length is None else length
    chunks: list[bytes] = []
    received = 0
    while received < wanted:
        chunk = stream.read(min(READ_SIZE, wanted - received))
        if not chunk:
            break
        chunks.append(chunk)
        received += len(chunk)
    if received > limit:
        raise too_large(limit)
    g.body = b"".join(chunks)
    return g.body  # type: ignore[no-any-return]


def is_json(mimetype: str) -> bool:
    return mimetype == JSON or mimetype.endswith("+json")


def parse_json(data: bytes, field: str = "body") -> Any:
    """A JSON document, or a 400 naming `field`."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise validation_problem([FieldError(field, "invalid_json", "not valid JSON")]) from None


def read_form(limit: int) -> tuple[MultiDict[str, str], dict[str, bytes]]:
    """The fields and the uploaded files' contents of a form body, within `limit` bytes."""
    data = read_body(limit)
    parser = FormDataParser(max_content_length=limit, max_form_memory_size=limit)
    _, form, files = parser.parse(
        io.BytesIO(data), request.mimetype, len(data), request.mimetype_params
    )
    uploads: dict[str, bytes] = {}
    for name, upload in files.items(multi=True):
        try:
            uploads.setdefault(name, upload.read())
        finally:
            upload.close()
    return form, uploads


def read_object(limit: int) -> dict[str, Any]:
    """The body as a flat mapping: a JSON object, or a form's first values."""
    mimetype = request.mimetype
    if is_json(mimetype):
        data = parse_json(read_body(limit))
        if not isinstance(data, dict):
            raise validation_problem(
                [FieldError("body", "invalid_type", "the body must be a JSON object")]
            )
        return data
    if mimetype in FORM_TYPES:
        form, _ = read_form(limit)
        return {key: form.get(key) for key in form}
    if not mimetype and not read_body(limit):
        return {}
    raise Problem(
        415,
        "unsupported-media-type",
        "send application/json or application/x-www-form-urlencoded",
    )


def read_input(model: type[Model], limit: int) -> Model:
    """The body (optional) validated by `model`; a 400 naming each bad field."""
    try:
        return parse_input(model, read_object(limit))
    except InvalidInput as error:
        raise validation_problem(error.errors) from None


def read_query(model: type[Model]) -> Model:
    """The query string validated by `model`; a 400 naming each bad parameter."""
    raw: dict[str, Any] = {key: request.args.get(key) for key in request.args}
    try:
        return parse_input(model, raw)
    except InvalidInput as error:
        raise validation_problem(error.errors) from None


@dataclass(frozen=True)
class Preferences:
    """What the client asked for with `Prefer` (RFC 7240)."""

    respond_async: bool = False
    wait: float | None = None


def read_preferences() -> Preferences:
    respond_async = False
    wait: float | None = None
    for header in request.headers.getlist("Prefer"):
        for preference in header.split(","):
            name, _, value = preference.strip().partition("=")
            name = name.strip().lower()
            if name == "respond-async":
                respond_async = True
            elif name == "wait":
                try:
                    wait = max(0.0, float(value.strip().strip('"')))
                except ValueError:
                    continue  # An unparseable preference is ignored, as RFC 7240 asks.
    return Preferences(respond_async=respond_async, wait=wait)
