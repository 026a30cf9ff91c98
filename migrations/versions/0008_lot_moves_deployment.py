"""lot moves, expired points per entry, the deployment's id, replayed batch items

Points now remember where they came from: every ledger entry that moves points of
a lot (an earn into it, a spend or a hold taking from it, a release, a capture or a
reversal giving points back, an expiry) records how many in `lot_moves`, so that
points given back return to the lots they were taken from (docs/points.md). An
entry's `expired` says how many of its points expired (an expiry, or points given
back to a lot that had expired). A lot may be overdrawn (remaining below zero) once
its earn is reversed while some of its points are spent or held, and stays open to
points given back after it expired; the expiry timer asks once per lot whose time
has come, whatever is left in it.

Rows made before this revision: each lot's history so far is summed up in the moves
of its earning entry (what was not spent of it) and of its expiry (what expired); holds
placed and
entries made before it have no moves, so what they give back returns to the
never-expiring points, as it did before.

`deployment` holds one random id, made here, that scopes the deployment's Redis
keys and channels. `batches.replayed` counts a batch's items that were found
accepted already by their own idempotency key and so not created again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY = """
CREATE FUNCTION refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'rows of % are append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER lot_moves_immutable
    BEFORE UPDATE OR DELETE ON lot_moves
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

CREATE TRIGGER lot_moves_no_truncate
    BEFORE TRUNCATE ON lot_moves
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
"""


def upgrade() -> None:
    op.add_column(
        "ledger_entries",
        sa.Column("expired", sa.BigInteger(), server_default="0", nullable=False),
    )
    # The column is new: filling it in for the expiries made so far changes no history.
    op.execute("ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_immutable")
    op.execute("UPDATE ledger_entries SET expired = -amount WHERE type = 'expire'")
    op.execute("ALTER TABLE ledger_entries ENABLE TRIGGER ledger_entries_immutable")
    op.create_check_constraint(
        "expired_within_amount",
        "ledger_entries",
        "expired >= 0 AND (type <> 'expire' OR expired = -amount)",
    )

    op.drop_constraint("remaining_within_amount", "lots", type_="check")
    op.create_check_constraint(
        "remaining_within_amount", "lots", "remaining <= amount AND remaining >= -amount"
    )
    op.drop_constraint("expired_once", "lots", type_="check")
    op.create_check_constraint(
        "expired_once",
        "lots",
        "(expired_at IS NULL) = (expired_amount IS NULL) AND (expired_at IS NULL"
        " OR (remaining <= 0 AND expired_amount >= 0 AND expired_amount <= amount))",
    )
    op.drop_index("ix_lots_live", table_name="lots")
    op.create_index(
        "ix_lots_live",
        "lots",
        ["account_id", "expires_at", "entry_ulid"],
        postgresql_where=sa.text("remaining <> 0"),
    )
    op.drop_index("ix_lots_due", table_name="lots")
    op.create_index(
        "ix_lots_due", "lots", ["expires_at"], postgresql_where=sa.text("expired_at IS NULL")
    )

    op.create_table(
        "lot_moves",
        sa.Column("entry_ulid", sa.String(length=26), nullable=False),
        sa.Column("lot_ulid", sa.String(length=26), nullable=False),
        sa.Column("delta", sa.BigInteger(), nullable=False),
        sa.Column("expired", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint("expired >= 0 AND (delta <> 0 OR expired <> 0)", name="moves_points"),
        sa.ForeignKeyConstraint(["entry_ulid"], ["ledger_entries.ulid"]),
        sa.ForeignKeyConstraint(["lot_ulid"], ["lots.entry_ulid"]),
        sa.PrimaryKeyConstraint("entry_ulid", "lot_ulid"),
    )
    op.create_index("ix_lot_moves_lot", "lot_moves", ["lot_ulid"])
    op.execute(APPEND_ONLY)
    # Each lot's history so far: its earning entry put in what was not spent, and its
    # expiry (if it took anything) took what expired.
    op.execute("""
        INSERT INTO lot_moves (entry_ulid, lot_ulid, delta, expired)
        SELECT entry_ulid, entry_ulid, remaining + COALESCE(expired_amount, 0), 0 FROM lots
        WHERE remaining + COALESCE(expired_amount, 0) <> 0
        UNION ALL
        SELECT x.ulid, l.entry_ulid, -l.expired_amount, l.expired_amount
        FROM lots l JOIN ledger_entries x ON x.related_id = l.entry_ulid AND x.type = 'expire'
        WHERE l.expired_amount > 0
    """)

    op.create_table(
        "deployment",
        sa.Column("singleton", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("singleton", name="one_row"),
        sa.PrimaryKeyConstraint("singleton"),
    )
    op.execute(
        "INSERT INTO deployment (id) VALUES (left(replace(gen_random_uuid()::text, '-', ''), 16))"
    )

    op.add_column(
        "batches", sa.Column("replayed", sa.Integer(), server_default="0", nullable=False)
    )


def downgrade() -> None:
    op.drop_column("batches", "replayed")
    op.drop_table("deployment")
    op.drop_table("lot_moves")
    op.execute("DROP FUNCTION refuse_change()")
    op.drop_index("ix_lots_due", table_name="lots")
    op.create_index(
        "ix_lots_due", "lots", ["expires_at"], postgresql_where=sa.text("remaining > 0")
    )
    op.drop_index("ix_lots_live", table_name="lots")
    op.create_index(
        "ix_lots_live",
        "lots",
        ["account_id", "expires_at", "entry_ulid"],
        postgresql_where=sa.text("remaining > 0"),
    )
    op.drop_constraint("expired_once", "lots", type_="check")
    op.create_check_constraint(
        "expired_once",
        "lots",
        "(expired_at IS NULL AND expired_amount IS NULL) OR (expired_at IS NOT NULL"
        " AND expired_amount IS NOT NULL AND remaining = 0 AND expired_amount >= 0"
        " AND expired_amount <= amount)",
    )
    op.drop_constraint("remaining_within_amount", "lots", type_="check")
    op.create_check_constraint(
        "remaining_within_amount", "lots", "remaining >= 0 AND remaining <= amount"
    )
    op.drop_constraint("expired_within_amount", "ledger_entries", type_="check")
    op.drop_column("ledger_entries", "expired")
