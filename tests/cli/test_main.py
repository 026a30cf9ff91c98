"""Issue 24, the CLI: one connection model, exit codes, errors in JSON, a fast --help."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import csv_files
from cli.embedded import EPHEMERAL_RANGE, LOWEST_CHOSEN_PORT, free_port, port_free
from cli.main import API, COMMANDS, DATABASE, cli
from shared.platform.config import METRICS_FOLDER_ENV
from tests.conftest import Services
from tests.stack import newcomer_tally

REPOSITORY = Path(__file__).resolve().parents[2]


def test_help_lists_each_command_under_what_it_talks_to_without_importing_them() -> None:
    """The root imports no command module (and so neither SQLAlchemy nor the client): its
    help is written from COMMANDS, whose one-line summaries are each command's own."""
    probe = (
        "import sys; from cli.main import cli; cli(['--help'], standalone_mode=False); "
        "print(sorted(m for m in ('sqlalchemy', 'tally_client', 'celery', 'psycopg') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPOSITORY, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
    help_text = " ".join(result.stdout.split())
    for section in (API, DATABASE):
        assert section in help_text
    for name, entry in COMMANDS.items():
        command = getattr(importlib.import_module(entry.module), name)
        assert command.get_short_help_str(limit=1000) == entry.summary, name
    assert "3 a server could not be reached" in help_text


def test_a_chosen_port_is_free_and_outside_the_range_outgoing_connections_take() -> None:
    """free_port's ports are for servers that bind them later (tally run's embedded servers,
    the tests' stacks): none comes from the kernel's ephemeral range, whose ports any
    outgoing connection may take in the meantime, and they are drawn at random."""
    low = int(EPHEMERAL_RANGE.read_text().split()[0])
    ports = {free_port() for _ in range(50)}
    assert all(LOWEST_CHOSEN_PORT <= port < low for port in ports), sorted(ports)
    assert all(port_free(port) for port in ports)
    assert len(ports) > 40
    # A run of ports (honcho's: api, worker and bulk worker 100 apart) ends below it too.
    runs = [free_port(3, 100) for _ in range(200)]
    assert all(LOWEST_CHOSEN_PORT <= base < low - 200 for base in runs), sorted(runs)
    assert all(port_free(base + 100 * i) for base in runs for i in range(3))


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("tally, version ")


def test_the_file_tally_run_writes_is_found_from_below_and_the_environment_wins(
    own_database: str, tmp_path: Path
) -> None:
    """A command run in (or under) the folder of `.tally/env` uses its URLs; one that
    cannot connect names the URL and the file it came from, and exits 3."""
    closed = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/tally"
    (tmp_path / ".tally").mkdir()
    saved = tmp_path / ".tally" / "env"
    saved.write_text(f"export TALLY_DATABASE_URL='{closed}'\n")
    below = tmp_path / "project" / "src"
    below.mkdir(parents=True)

    result = newcomer_tally("reconcile", cwd=below)
    assert result.returncode == 3, result.stderr
    assert f"could not reach the database at {closed} (TALLY_DATABASE_URL from {saved})" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    as_json = newcomer_tally("reconcile", "--json", cwd=below)
    assert as_json.returncode == 3
    assert json.loads(as_json.stderr)["error"]["code"] == "unreachable"

    # The environment wins over the file.
    result = newcomer_tally(
        "reconcile", "--json", cwd=below, env={"TALLY_DATABASE_URL": own_database}
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["violations"] == []

    # The file's URL works as well as a variable would.
    saved.write_text(f"export TALLY_DATABASE_URL='{own_database}'\n")
    created = newcomer_tally("users", "create", "--username", "from.env.file", "--json", cwd=below)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["username"] == "from.env.file"

    # TALLY_ENV_FILE names another file; without any, the message says how to set one.
    elsewhere = newcomer_tally(
        "reconcile", cwd=REPOSITORY.parent, env={"TALLY_ENV_FILE": str(saved)}
    )
    assert elsewhere.returncode == 0, elsewhere.stderr
    default = newcomer_tally(
        "reconcile",
        cwd=tmp_path,
        env={"TALLY_ENV_FILE": os.devnull, "TALLY_DATABASE_URL": closed},
    )
    assert default.returncode == 3 and "TALLY_DATABASE_URL from the environment" in default.stderr


def test_a_database_that_is_not_tallys_is_named_not_a_traceback(
    own_database: str, tmp_path: Path
) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(own_database)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("DROP TABLE tokens CASCADE"))
    engine.dispose()
    result = newcomer_tally(
        "tokens", "list", cwd=tmp_path, env={"TALLY_DATABASE_URL": own_database}
    )
    assert result.returncode == 3, result.stderr
    assert "not tally's database, or one not migrated yet" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_api_exits_3_naming_its_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = newcomer_tally(
        "points", "balance", "42", "--retry-for", "0", "--json",
        cwd=tmp_path, env={"TALLY_URL": url, "TALLY_TOKEN": "tly_x"},
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "unreachable" and url in error["message"]
    assert "TALLY_URL from the environment" in error["message"]


def test_usage_errors_exit_2_and_honour_json(services: Services) -> None:
    runner = CliRunner(env={"TALLY_DATABASE_URL": services.database_url})
    result = runner.invoke(cli, ["tokens", "create", "--json"])
    assert result.exit_code == 2
    assert json.loads(result.stderr) == {
        "error": {"code": "usage", "message": "Missing option '--username'."}
    }
    missing = runner.invoke(cli, ["tokens", "create", "--username", "nobody.here", "--json"])
    assert missing.exit_code == 1
    assert json.loads(missing.stderr)["error"]["code"] == "not_found"


@pytest.mark.parametrize("command", [["status"], ["worker"], ["api"]])
def test_a_setting_that_does_not_parse_exits_2_naming_its_variable(command: list[str]) -> None:
    runner = CliRunner(env={"TALLY_LOCK_TTL": "30s"})
    result = runner.invoke(cli, [*command, "--json"] if command == ["status"] else command)
    assert result.exit_code == 2, result.output
    message = "TALLY_LOCK_TTL: Input should be a valid number"
    if command == ["status"]:
        assert json.loads(result.stderr)["error"]["code"] == "configuration"
    assert message in result.stderr and "Traceback" not in result.stderr
    # `tally api` made its metrics folder before it read the settings: the environment
    # does not name it now that it is gone (processes started later would fail on it).
    assert (
        os.environ.get(METRICS_FOLDER_ENV) is None or Path(os.environ[METRICS_FOLDER_ENV]).is_dir()
    )


def test_json_times_are_rfc_3339_utc(services: Services) -> None:
    runner = CliRunner(env={"TALLY_DATABASE_URL": services.database_url})
    assert runner.invoke(cli, ["users", "create", "--username", "iso.times"]).exit_code == 0
    made = runner.invoke(cli, ["tokens", "create", "--username", "iso.times", "--expires-in",
                               "1d", "--json"])  # fmt: skip
    expires_at = json.loads(made.stdout)["expires_at"]
    assert expires_at.endswith("Z") and "T" in expires_at, expires_at
    listed = json.loads(runner.invoke(cli, ["tokens", "list", "--json"]).stdout)
    assert all(t["created_at"].endswith("Z") for t in listed)


def test_one_csv_reader_names_the_row_and_a_semicolon_delimiter(tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_text("username;real_name\nada;Ada Lovelace\n")
    with pytest.raises(csv_files.UnreadableFile) as refused:
        list(csv_files.rows(path, ("username", "real_name"), "username", header=True))
    assert refused.value.problems == [
        "row 1: a header row naming the columns (username, real_name); is the file delimited"
        " by ';'? tally reads commas"
    ]
    awards = tmp_path / "awards.csv"
    awards.write_text("\nada;;5;contest;well done\n")
    columns = ("username", "user_id", "variation_points", "context", "comment")
    with pytest.raises(csv_files.UnreadableFile) as refused:
        list(csv_files.rows(awards, columns, "username", header=False))
    assert refused.value.problems == [
        "row 2: 1 column where 5 were expected (username, user_id, variation_points, context,"
        " comment); is the file delimited by ';'? tally reads commas"
    ]
    awards.write_text('username,user_id,variation_points,context,comment\n"ada"x,,5,c,\n')
    with pytest.raises(csv_files.UnreadableFile) as refused:
        list(csv_files.rows(awards, columns, "username", header=False))
    (problem,) = refused.value.problems
    assert problem.startswith("row 2: not readable as CSV: ")
    awards.write_text("comment,username,variation_points,user_id,context\n  hi ,ada,5,,c\n")
    assert list(csv_files.rows(awards, columns, "username", header=False)) == [
        (2, {"comment": "hi", "username": "ada", "variation_points": "5", "user_id": "",
             "context": "c"}),
    ]  # fmt: skip


def test_users_import_names_the_delimiter_of_a_semicolon_file(
    services: Services, tmp_path: Path
) -> None:
    path = tmp_path / "users.csv"
    path.write_text("username;real_name\nada;Ada Lovelace\n")
    runner = CliRunner(env={"TALLY_DATABASE_URL": services.database_url})
    result = runner.invoke(cli, ["users", "import", str(path), "--json"])
    assert result.exit_code == 1
    (error,) = json.loads(result.stdout)["errors"]
    assert "is the file delimited by ';'?" in error
