"""DRF-style limit/offset pages: `{count, next, previous, results}` (links: see api.links)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from flask import request

from api.links import this_url
from shared.reads.query_params import PageQuery


def _link(limit: int, offset: int) -> str:
    """This request's URL with `limit` and `offset` replaced, the other parameters kept."""
    params = [(k, v) for k, v in request.args.items(multi=True) if k not in ("limit", "offset")]
    params.append(("limit", str(limit)))
    # As DRF does, the link to the first page carries no offset.
    if offset > 0:
        params.append(("offset", str(offset)))
    return this_url(urlencode(params))


def page(results: Sequence[Any], count: int, query: PageQuery) -> dict[str, Any]:
    """The page envelope; `next` and `previous` are null at the ends."""
    following = query.offset + query.limit
    next_link = _link(query.limit, following) if following < count else None
    previous_link = (
        _link(query.limit, max(query.offset - query.limit, 0)) if query.offset > 0 else None
    )
    return {"count": count, "next": next_link, "previous": previous_link, "results": list(results)}
