"""Database engine and sessions, built from Settings and passed around explicitly."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from shared.platform.tracing import trace_engine

# libpq parameters, unless the URL sets them. A database host that is down, or gone
# from the network (a dead machine, a partition: no answer at all), must cost a caller
# seconds, not the kernel's minutes: the connect gives up after 2 s per host (a
# multi-host URL tries the next), and on a connection in use, data unacknowledged for
# 3 s (tcp_user_timeout; on a LAN that is a peer gone, however busy the server: its
# kernel acknowledges) or an idle peer silent for 3 + 3 x 1 s (keepalives) drops it. A
# database failover takes about 10 s: a connection to the old primary must be given up
# well within it, and each process's pool finds its connections gone one by one (the
# first failure drops the rest), each request on one waiting out these timeouts.
CONNECTION_DEFAULTS = {
    "connect_timeout": 2,
    "keepalives": 1,
    "keepalives_idle": 3,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "tcp_user_timeout": 3_000,
}

# SQLSTATE of a write on a server that is read-only: a primary demoted to standby.
READ_ONLY_SQL_TRANSACTION = "25006"

# The execution option of a statement psycopg must never prepare (see _unprepared).
UNPREPARED = {"tally_unprepared": True}


def make_engine(
    database_url: str,
    *,
    pool_size: int = 5,
    pool_timeout: float = 5.0,
    pre_ping: bool = True,
    prepared_statements: bool = True,
) -> Engine:
    """An engine whose pool holds `pool_size` connections and never more.

    A caller that waits `pool_timeout` seconds for a connection gets sqlalchemy's
    TimeoutError (the API answers 503 with Retry-After) rather than waiting on.
    `pre_ping` tests each connection on checkout, a round trip; the API and the
    workers go without (it was one round trip in four on the accept path): after a
    PostgreSQL restart the first statement on a dead connection fails (a 503, or a
    task retry) and SQLAlchemy then discards the whole pool's older connections.
    Without `prepared_statements` psycopg never prepares one (a transaction-mode PgBouncer
    before 1.21 would run it on a server connection that lacks it).
    """
    connect_args: dict[str, object] = {
        name: value
        for name, value in CONNECTION_DEFAULTS.items()
        if name not in make_url(database_url).query  # the URL's own choice wins
    }
    if not prepared_statements:
        connect_args["prepare_threshold"] = None
    engine = create_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=pre_ping,
        pool_timeout=pool_timeout,
        connect_args=connect_args,
    )
    event.listen(engine, "handle_error", _demoted_primary_is_gone)
    event.listen(engine, "do_execute", _unprepared)
    trace_engine(engine)  # if an OTLP endpoint is configured
    return engine


def _demoted_primary_is_gone(context: ExceptionContext) -> None:
    """A write refused as read-only comes from a connection to a primary that has since
    been demoted (a failover): treat it as a lost connection, so that SQLAlchemy drops
    the pool's connections and the next ones find the new primary (libpq's multi-host
    URL with target_session_attrs=read-write, or a proxy that routes to the primary)."""
    if getattr(context.original_exception, "sqlstate", None) == READ_ONLY_SQL_TRANSACTION:
        context.is_disconnect = True


def _unprepared(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
    """Run a statement with the UNPREPARED option unprepared: PostgreSQL plans it with each
    run's values and the table as it is then. psycopg prepares a statement on its fifth
    run on a connection, and PostgreSQL may then keep one generic plan for it; one made
    while a table was nearly empty (a new database) stays a sequential scan after a bulk
    batch has filled it. (Run inside SQLAlchemy's execute, whose error handling stays.)"""
    if not context.execution_options.get("tally_unprepared"):
        return False
    cursor.execute(statement, parameters, prepare=False)
    return True


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def autocommit(engine: Engine) -> Iterator[Connection]:
    """A connection on which each statement is its own transaction, committed when it
    returns: for work that needs no transaction around its statements.

    Closing it rolls nothing back. psycopg's rollback() of an open transaction forgets
    every statement the connection prepared (and counts their runs again from zero), so
    a pooled connection whose transactions often end in a rollback, as a read's does,
    has its statements parsed and planned again on nearly every run."""
    with engine.connect() as connection:
        yield connection.execution_options(isolation_level="AUTOCOMMIT")


# Whether the transaction has written: PostgreSQL gives it an id on its first write.
WROTE = text("SELECT txid_current_if_assigned() IS NOT NULL")
# In a session's `info` while its transaction holds a connection.
ON_A_CONNECTION = "tally_on_a_connection"


@event.listens_for(Session, "after_begin")
def _began_on_a_connection(session: Session, _transaction: Any, _connection: Any) -> None:
    session.info[ON_A_CONNECTION] = True


@event.listens_for(Session, "after_transaction_end")
def _ended(session: Session, transaction: Any) -> None:
    if transaction.parent is None:  # the outermost: its connection goes back to the pool
        session.info.pop(ON_A_CONNECTION, None)


def end_unwritten(session: Session) -> None:
    """End the session's transaction, keeping nothing it did not commit: one that surely
    wrote nothing is committed, which for it is the same as a rollback but keeps
    psycopg's prepared statements (see autocommit); any other is rolled back."""
    if _wrote_nothing(session):
        session.commit()
    else:
        session.rollback()


def _wrote_nothing(session: Session) -> bool:
    """Whether the session's transaction holds a connection, on which statements are
    prepared, and has written nothing. Any doubt is a no: a transaction that never got a
    connection (the pool had none to give), one a lost connection ended, pending changes
    of the session's objects, or an error while asking."""
    transaction = session.get_transaction()
    if (
        transaction is None
        or not transaction.is_active
        or not session.info.get(ON_A_CONNECTION)
        or session.new
        or session.dirty
        or session.deleted
    ):
        return False
    try:
        connection = session.connection()
        raw = connection.connection.driver_connection
        if raw is None or raw.prepare_threshold is None:  # None: it never prepares
            return False
        if raw.info.transaction_status != TransactionStatus.INTRANS:
            return False
        return not connection.scalar(WROTE)
    except SQLAlchemyError:
        return False


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on error."""
    with factory() as session, session.begin():
        yield session
