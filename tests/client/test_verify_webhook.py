"""verify_webhook: the Standard Webhooks check with the standard library, against the
reference library's signatures."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook
from tally_client import WebhookVerificationError, verify_webhook

from shared.events.webhooks import new_secret

BODY = b'{"id":7,"type":"entry.created","data":{}}'


def signed(secret: str, body: bytes = BODY, at: float | None = None) -> dict[str, str]:
    moment = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    return {
        "Webhook-Id": "7",
        "Webhook-Timestamp": str(int(moment.timestamp())),
        "Webhook-Signature": Webhook(secret).sign("7", moment, body.decode()),
    }


def test_a_signature_of_the_reference_library_verifies_with_any_header_case() -> None:
    secret = new_secret()
    assert verify_webhook(BODY, signed(secret), secret) == {
        "id": 7, "type": "entry.created", "data": {},
    }  # fmt: skip
    assert verify_webhook(BODY.decode(), signed(secret), secret)["id"] == 7


def test_any_of_several_signatures_may_match_and_other_versions_are_skipped() -> None:
    old, new = new_secret(), new_secret()
    headers = signed(new)
    headers["Webhook-Signature"] = "v1a,xyz v1,!!notbase64 " + signed(old)["Webhook-Signature"]
    assert verify_webhook(BODY, headers, old)["id"] == 7
    with pytest.raises(WebhookVerificationError, match="no signature"):
        verify_webhook(BODY, headers, new)


@pytest.mark.parametrize("missing", ["Webhook-Id", "Webhook-Timestamp", "Webhook-Signature"])
def test_a_missing_header_is_refused(missing: str) -> None:
    secret = new_secret()
    headers = signed(secret)
    del headers[missing]
    with pytest.raises(WebhookVerificationError, match="required"):
        verify_webhook(BODY, headers, secret)


def test_stale_future_and_malformed_timestamps_are_refused() -> None:
    secret = new_secret()
    for at in (time.time() - 301, time.time() + 301):
        with pytest.raises(WebhookVerificationError, match="too old or too new"):
            verify_webhook(BODY, signed(secret, at=at), secret)
    assert verify_webhook(BODY, signed(secret, at=time.time() - 900), secret, tolerance=1000)
    headers = signed(secret) | {"Webhook-Timestamp": "soon"}
    with pytest.raises(WebhookVerificationError, match="Unix time"):
        verify_webhook(BODY, headers, secret)


def test_a_changed_body_id_or_secret_is_refused() -> None:
    secret = new_secret()
    headers = signed(secret)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY.replace(b"7", b"8"), headers, secret)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, headers | {"Webhook-Id": "8"}, secret)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, headers, new_secret())
    with pytest.raises(WebhookVerificationError, match="whsec_"):
        verify_webhook(BODY, headers, "whsec_not base64!")
