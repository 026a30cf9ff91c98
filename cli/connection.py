"""Where every `tally` command finds its servers: the environment, else the file `tally run`
writes, else the defaults; and how a command says which one it could not reach.

`tally run` saves the URLs of the stack it started (and the demo token) in `.tally/env`
beside the embedded servers' data, and removes the file when it stops. Any `tally` command
run in that folder (or below it) reads the file, as git finds `.git`; `TALLY_ENV_FILE`
names another file. A variable set in the environment always wins over the file.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

FILE_VARIABLE = "TALLY_ENV_FILE"
DATA_DIR = ".tally"
FILE_NAME = "env"
# What `tally run` saves: the servers' URLs and queue, the API's address, the demo token.
SAVED = ("TALLY_DATABASE_URL", "TALLY_REDIS_URL", "TALLY_QUEUE_NAME", "TALLY_URL", "TALLY_TOKEN")
# SQLSTATE classes of a failed connection: 08 connection exception, 28 invalid
# authorization, 3D invalid catalog name (no such database), 57P operator intervention.
CONNECTION_STATES = ("08", "28", "3D", "57P")
# A table tally needs is missing: another application's database, or one not migrated.
UNDEFINED_TABLE = "42P01"
NOT_MIGRATED = " (not tally's database, or one not migrated yet: `tally db upgrade`)"
# Where each variable the file supplied came from, for the messages below.
_from_file: dict[str, Path] = {}


def find(start: Path) -> Path | None:
    """TALLY_ENV_FILE if set, else the first `.tally/env` in `start` or a folder above it."""
    named = os.environ.get(FILE_VARIABLE)
    if named:
        return Path(named)
    for folder in (start, *start.parents):
        candidate = folder / DATA_DIR / FILE_NAME
        if candidate.is_file():
            return candidate
    return None


def load(start: Path | None = None) -> Path | None:
    """Fill the variables of the file found from `start` (default: the working folder)
    that the environment does not set; the file, if any."""
    path = find(start or Path.cwd())
    if path is None or not path.is_file():
        return None
    for name, value in dotenv_values(path).items():
        if name in SAVED and value is not None and name not in os.environ:
            os.environ[name] = value
            _from_file[name] = path
    return path


def source_of(name: str) -> str:
    """Where the value of variable `name` came from, as a message says it."""
    if name in _from_file:
        return f"{name} from {_from_file[name]}"
    if name in os.environ:
        return f"{name} from the environment"
    return f"the default; set {name} or start the stack with `tally run`"


def write(path: Path, values: Mapping[str, str]) -> None:
    """Save `values` as `export NAME='value'` lines, readable by their owner only (the
    token is a secret); a shell can source the file too."""
    text = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in values.items())
    write_private(path, text)


def write_private(path: Path, text: str) -> None:
    """Write `path` readable by its owner only, even if it was readable by others before.

    `touch(mode=...)` leaves an existing file's mode alone; here the mode is narrowed
    before anything is written, so a secret is never in a file whose mode lets others
    read it.
    """
    descriptor = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        os.fchmod(descriptor, 0o600)
        file.write(text)


def shown(url: str) -> str:
    """`url` with its password masked."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: shown as given
        return url


def unreachable(error: BaseException) -> str | None:
    """What `error` says could not be reached, and where its address came from; None if
    it is not a connection failure. Only the modules already imported can have raised."""
    modules = sys.modules
    if "tally_client" in modules and isinstance(error, modules["tally_client"].Unreachable):
        return f"could not reach the API: {error} ({source_of('TALLY_URL')})"
    database = [
        getattr(modules.get("sqlalchemy.exc"), "DBAPIError", None),
        getattr(modules.get("psycopg"), "Error", None),
    ]
    if any(kind is not None and isinstance(error, kind) for kind in database):
        # No answer, or a server that refuses this client (wrong password, no such
        # database, shutting down), or a database without tally's tables: not a deadlock,
        # a serialization failure or a constraint.
        state = getattr(getattr(error, "orig", error), "sqlstate", None)
        if state == UNDEFINED_TABLE:
            return _server("tally's database", "TALLY_DATABASE_URL", error, NOT_MIGRATED)
        if state is None or state.startswith(CONNECTION_STATES):
            return _server("the database", "TALLY_DATABASE_URL", error)
    redis = [
        getattr(modules.get("redis.exceptions"), "ConnectionError", None),
        getattr(modules.get("redis.exceptions"), "TimeoutError", None),
        getattr(modules.get("kombu.exceptions"), "OperationalError", None),
    ]
    if any(kind is not None and isinstance(error, kind) for kind in redis):
        return _server("Redis", "TALLY_REDIS_URL", error)
    return None


def _server(name: str, variable: str, error: BaseException, hint: str = "") -> str:
    from shared.platform.config import load_settings

    url = getattr(load_settings(), variable.removeprefix("TALLY_").lower())
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    return f"could not reach {name} at {shown(url)} ({source_of(variable)}): {reason}{hint}"
