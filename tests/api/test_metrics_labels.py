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
