"""lots, holds and reversals

Points earned with an expiry become lots, which spends consume oldest-expiring
first and the expiry task expires; holds move points into the account's
frozen_balance until captured, released or timed out; every ledger entry records
what it moved into or out of frozen_balance. Requests name their operation
(`entry_type`), and the amount each operation carries is checked; an entry is
reversed, a lot expired and a hold closed at most once.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# An entry is reversed, a lot expired and a hold closed at most once.
LEDGER_SUBJECTS = {
    "ix_ledger_entries_one_reversal": "= 'reversal'",
    "ix_ledger_entries_one_expiry": "= 'expire'",
    "ix_ledger_entries_one_closing": "IN ('capture', 'release')",
}


def upgrade() -> None:
    op.add_column(
        "ledger_entries",
        sa.Column("frozen_amount", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.create_check_constraint(
        "type_known",
        "ledger_entries",
        "type IN ('earn', 'spend', 'adjust', 'reversal', 'expire', 'hold', 'capture', 'release')",
    )
    for name, types in LEDGER_SUBJECTS.items():
        op.create_index(
            name,
            "ledger_entries",
            ["related_id"],
            unique=True,
            postgresql_where=sa.text(f"type {types}"),
        )

    op.drop_constraint("amount_not_zero", "adjustment_requests", type_="check")
    op.create_check_constraint(
        "entry_type_known",
        "adjustment_requests",
        "entry_type IN ('adjust', 'reversal', 'expire', 'hold', 'capture', 'release', 'timeout')",
    )
    op.create_check_constraint(
        "amount_fits_type",
        "adjustment_requests",
        "CASE WHEN entry_type IN ('adjust', 'reversal') THEN amount <> 0"
        " WHEN entry_type = 'hold' THEN amount > 0"
        " WHEN entry_type = 'capture' THEN amount >= 0"
        " ELSE amount = 0 END",
    )
    op.create_index(
        "ix_adjustment_requests_one_per_subject",
        "adjustment_requests",
        ["entry_type", "related_id"],
        unique=True,
        postgresql_where=sa.text(
            "entry_type IN ('reversal', 'expire', 'timeout') AND status <> 'rejected'"
        ),
    )

    op.create_check_constraint(
        "frozen_within_balance",
        "accounts",
        "frozen_balance >= 0 AND (frozen_balance = 0 OR allow_negative"
        " OR frozen_balance <= balance)",
    )
    op.create_check_constraint("expired_not_negative", "accounts", "expired_points >= 0")

    op.create_table(
        "lots",
        sa.Column("entry_ulid", sa.String(length=26), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=26), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expired_amount", sa.BigInteger(), nullable=True),
        sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("amount > 0", name="amount_positive"),
        sa.CheckConstraint(
            "remaining >= 0 AND remaining <= amount", name="remaining_within_amount"
        ),
        sa.CheckConstraint(
            "(expired_at IS NULL AND expired_amount IS NULL) OR (expired_at IS NOT NULL"
            " AND expired_amount IS NOT NULL AND remaining = 0 AND expired_amount >= 0"
            " AND expired_amount <= amount)",
            name="expired_once",
        ),
        sa.ForeignKeyConstraint(["entry_ulid"], ["ledger_entries.ulid"]),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.PrimaryKeyConstraint("entry_ulid"),
    )
    op.create_index(
        "ix_lots_live",
        "lots",
        ["account_id", "expires_at", "entry_ulid"],
        postgresql_where=sa.text("remaining > 0"),
    )
    op.create_index(
        "ix_lots_due", "lots", ["expires_at"], postgresql_where=sa.text("remaining > 0")
    )

    op.create_table(
        "holds",
        sa.Column("request_id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=26), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("captured", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_by", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("amount > 0", name="amount_positive"),
        sa.CheckConstraint(
            "status IN ('open', 'captured', 'released', 'timed_out')", name="status_known"
        ),
        sa.CheckConstraint(
            "(status = 'captured') = (captured > 0) AND captured <= amount",
            name="captured_within_amount",
        ),
        sa.CheckConstraint("(status = 'open') = (closed_by IS NULL)", name="closed_once"),
        sa.ForeignKeyConstraint(["request_id"], ["adjustment_requests.id"]),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.ForeignKeyConstraint(["closed_by"], ["adjustment_requests.id"]),
        sa.PrimaryKeyConstraint("request_id"),
        sa.UniqueConstraint("closed_by"),
    )
    op.create_index(
        "ix_holds_due", "holds", ["expires_at"], postgresql_where=sa.text("status = 'open'")
    )


def downgrade() -> None:
    op.drop_table("holds")
    op.drop_table("lots")
    op.drop_constraint("expired_not_negative", "accounts", type_="check")
    op.drop_constraint("frozen_within_balance", "accounts", type_="check")
    op.drop_index("ix_adjustment_requests_one_per_subject", table_name="adjustment_requests")
    op.drop_constraint("amount_fits_type", "adjustment_requests", type_="check")
    op.drop_constraint("entry_type_known", "adjustment_requests", type_="check")
    op.create_check_constraint("amount_not_zero", "adjustment_requests", "amount <> 0")
    for name in LEDGER_SUBJECTS:
        op.drop_index(name, table_name="ledger_entries")
    op.drop_constraint("type_known", "ledger_entries", type_="check")
    op.drop_column("ledger_entries", "frozen_amount")
