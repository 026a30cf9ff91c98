"""The requests tally makes itself when time passes: lot expiries and hold timeouts.

Each is an adjustment request like a client's, applied by the worker in the account's
order. Every lot is asked to expire when its time comes, whatever is left in it (a lot
spent or held to the last point still expires, so that points given back to it later
expire at once); a hold is asked to time out if still open. Each at most once: the statement
skips subjects already asked, and the requests' unique index on (entry_type,
related_id) refuses a second live request should two runs overlap. The request has no
idempotency key (the namespace is the clients'); its creator is the creator of the
points that expire or of the hold.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

# Shared by both statements: insert the selected rows as queued requests, skip a subject
# with a live request already, return the accounts to hand to the workers.
_INSERT = """
    INSERT INTO adjustment_requests (
        tenant_id, idempotency_key, fingerprint, account_id, user_id, amount, entry_type,
        reputation_context, comment, reason, source, related_id, expires_at, allow_negative,
        created_by, status, attempts)
    SELECT due.tenant_id, NULL,
           encode(sha256(convert_to(:operation || ':' || due.subject, 'UTF8')), 'hex'),
           due.account_id, due.user_id, 0, :operation, '', '', :reason, 'tally', due.subject,
           due.expires_at, false, due.created_by, 'queued', 0
    FROM ({due}) due
    WHERE NOT EXISTS (
        SELECT 1 FROM adjustment_requests asked
        WHERE asked.entry_type = :operation AND asked.related_id = due.subject
          AND asked.status <> 'rejected')
    ORDER BY due.expires_at
    LIMIT :limit
    ON CONFLICT (entry_type, related_id)
        WHERE entry_type IN ('reversal', 'expire', 'timeout') AND status <> 'rejected'
        DO NOTHING
    RETURNING account_id
"""

DUE_LOTS = text(
    _INSERT.format(
        due="""
        SELECT l.tenant_id, l.account_id, a.user_id, e.created_by, l.entry_ulid AS subject,
               l.expires_at
        FROM lots l
        JOIN ledger_entries e ON e.ulid = l.entry_ulid
        JOIN accounts a ON a.id = l.account_id
        WHERE l.expired_at IS NULL AND l.expires_at <= now()
    """
    )
)

DUE_HOLDS = text(
    _INSERT.format(
        due="""
        SELECT h.tenant_id, h.account_id, r.user_id, r.created_by,
               h.request_id::text AS subject, h.expires_at
        FROM holds h
        JOIN adjustment_requests r ON r.id = h.request_id
        WHERE h.status = 'open' AND h.expires_at <= now()
    """
    )
)


def request_expiries(session: Session, limit: int) -> list[str]:
    """Ask for the expiry of up to `limit` due lots; the accounts of the new requests."""
    rows = session.execute(
        DUE_LOTS, {"operation": "expire", "reason": "points expired", "limit": limit}
    )
    return sorted({account_id for (account_id,) in rows})


def request_hold_timeouts(session: Session, limit: int) -> list[str]:
    """Ask for the release of up to `limit` open holds past their timeout; their accounts."""
    rows = session.execute(
        DUE_HOLDS, {"operation": "timeout", "reason": "hold timed out", "limit": limit}
    )
    return sorted({account_id for (account_id,) in rows})
