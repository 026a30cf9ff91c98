"""ledger references through the request

A ledger entry is written by one statement that copies its account, tenant and
creator from its request row, and the request row's own foreign keys already tie
those to accounts, tenants and users. The entry keeps one foreign key, to its
request; the three others were checked again for every entry, a third of the time
spent writing a chunk. `tally reconcile` checks that every entry agrees with its
request.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 10:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DROPPED = {
    "ledger_entries_account_id_fkey": ("account_id", "accounts"),
    "ledger_entries_tenant_id_fkey": ("tenant_id", "tenants"),
    "ledger_entries_created_by_fkey": ("created_by", "users"),
}


def upgrade() -> None:
    for name in DROPPED:
        op.drop_constraint(name, "ledger_entries", type_="foreignkey")


def downgrade() -> None:
    for name, (column, table) in DROPPED.items():
        op.create_foreign_key(name, "ledger_entries", table, [column], ["id"])
