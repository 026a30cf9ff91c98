"""Links in answers (Location, status URLs, page links): never built from the Host header.

The Host header is the client's to choose: a client sending `Host: evil.example` must
not get `Location: http://evil.example/...` back (nor a cache or a log keep it). With
TALLY_PUBLIC_URL set, links are absolute under it; without, they are relative to the
server's root, which RFC 9110 (section 10.2.2) allows for Location.
"""

from __future__ import annotations

from typing import Any

from flask import request, url_for

from api.resources import resources


def _public(path: str) -> str:
    return resources().settings.public_url.rstrip("/") + path


def link_to(endpoint: str, **values: Any) -> str:
    """The URL of a route, e.g. link_to("bulk.batch", batch_id=7)."""
    return _public(url_for(endpoint, **values))


def this_url(query: str) -> str:
    """This request's URL with another query string."""
    return _public(f"{request.script_root}{request.path}?{query}")
