"""Migration 0011 on a filled database: the time of `tally db upgrade` from 0010, and proof
that every entry is kept and the ledger reconciles (PERFORMANCE.md, "The partitioned
ledger").

It migrates the empty database TALLY_DATABASE_URL to 0010, fills it with
bench/read_latency.py's set-based fill (--entries over --users; the ULIDs made from the
entries' times, as the applier makes them), reads a fingerprint of the ledger (the
count, the sums of amounts and balances, an MD5 over every entry), runs `tally db
upgrade`, reads the fingerprint again and runs `tally reconcile`.

Usage: TALLY_DATABASE_URL=... python bench/partition_migration.py [--entries 1000000]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import time
from pathlib import Path

from read_latency import FILL, fill  # bench/read_latency.py, beside this script
from sqlalchemy import Connection, create_engine, text

from shared.platform.config import load_settings
from shared.platform.migrate import upgrade
from shared.platform.resources import Resources

MIGRATION = Path(__file__).parents[1] / "migrations/versions/0011_partitioned_ledger.py"
FINGERPRINT = text("""
    SELECT (SELECT count(*) FROM ledger_entries), (SELECT sum(amount) FROM ledger_entries),
           (SELECT count(*) FROM adjustment_requests), (SELECT sum(balance) FROM accounts),
           (SELECT md5(string_agg(ulid || ':' || id || ':' || amount || ':' || balance_after,
                                  ',' ORDER BY ulid)) FROM ledger_entries)
""")


def fingerprint(connection: Connection) -> tuple[object, ...]:
    return tuple(connection.execute(FINGERPRINT).one())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args()
    url = load_settings().database_url
    upgrade(url, "0010")
    # 0010 has no ulid_floor(), which the fill uses: borrowed from 0011 for the fill.
    ulid_floor = re.search(r"(CREATE FUNCTION ulid_floor.*?\$\$;)", MIGRATION.read_text(), re.S)
    assert ulid_floor is not None
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(ulid_floor.group(1)))
    # The partitions are 0011's: the fill's statements that make them are left out.
    statements = [s for s in FILL if "ledger_entries_partition" not in s and "DETACH" not in s]
    resources = Resources(load_settings())
    fill(resources, args.users, args.entries, args.days, statements)
    resources.close()
    with engine.begin() as connection:
        connection.execute(text("DROP FUNCTION ulid_floor(timestamptz)"))
    with engine.connect() as connection:
        before = fingerprint(connection)
    print(f"before: {before}")
    started = time.perf_counter()
    env = os.environ | {"TALLY_DATABASE_URL": url}
    subprocess.run(["tally", "db", "upgrade"], env=env, check=True)
    print(f"tally db upgrade, 0010 to 0011: {time.perf_counter() - started:.1f} s")
    with engine.connect() as connection:
        after = fingerprint(connection)
        partitions = connection.execute(
            text("SELECT tableoid::regclass, count(*) FROM ledger_entries GROUP BY 1")
        ).all()
    print(f"after:  {after}: {'the same' if after == before else 'DIFFERENT'}")
    print(f"entries by partition: {partitions}")
    reconciled = subprocess.run(["tally", "reconcile"], env=env, capture_output=True, text=True)
    print(f"tally reconcile (exit {reconciled.returncode}): {reconciled.stdout.strip()}")
    engine.dispose()


if __name__ == "__main__":
    main()
