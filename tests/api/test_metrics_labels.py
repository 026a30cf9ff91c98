"""Every label value the API's metrics carry comes from a closed set, whatever clients send."""

from __future__ import annotations

import secrets

from flask.testing import FlaskClient


def _metrics_size(client: FlaskClient) -> int:
    return len(client.get("/metrics").data)


def test_a_thousand_junk_methods_and_paths_leave_metrics_the_same_size(
    client: FlaskClient,
) -> None:
    def junk() -> None:
        client.open("/healthz", method="X" + secrets.token_hex(2000))
        client.get("/" + secrets.token_hex(2000))
        client.open("/no/" + secrets.token_hex(50), method="M" + secrets.token_hex(8))

    junk()  # the first of each kind may add its series (`other`, `unmatched`) once,
    _metrics_size(client)  # and so may the first scrape
    before = _metrics_size(client)
    for _ in range(334):
        junk()
    grown = _metrics_size(client) - before
    assert grown < 1024, grown


def test_standard_methods_keep_their_names(client: FlaskClient) -> None:
    client.options("/healthz")
    client.delete("/healthz")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'method="OPTIONS",route="/healthz",status="200"' in text
    assert 'method="DELETE",route="unmatched",status="405"' in text


def test_metrics_has_a_valid_content_type_and_the_build_info(client: FlaskClient) -> None:
    """Issue 24: one charset in the Content-Type (Flask's mimetype= added a second), and
    `tally_build_info` says what runs."""
    import platform
    from importlib import metadata

    from prometheus_client import CONTENT_TYPE_LATEST

    answer = client.get("/metrics")
    assert answer.headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert answer.headers["Content-Type"].count("charset") == 1
    build = (
        f'tally_build_info{{python="{platform.python_version()}",'
        f'version="{metadata.version("tally")}"}} 1.0'
    )
    assert build in answer.get_data(as_text=True)
