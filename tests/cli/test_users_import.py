"""`tally users import FILE.csv`: all or nothing, existing usernames skipped."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli
from tests.conftest import Services

HEADER = "username,external_id,real_name,email,avatar,description,role\n"


def _import(services: Services, path: Path, tenant: str) -> tuple[int, dict]:
    runner = CliRunner(env={"TALLY_DATABASE_URL": services.database_url})
    result = runner.invoke(cli, ["users", "import", str(path), "--tenant", tenant, "--json"])
    return result.exit_code, json.loads(result.output)


def test_import_creates_users_and_skips_existing(services: Services, tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_text(HEADER + "ann,ext-ann,Ann,,,,user\nbob,,Bob,,,,moderator\n")
    assert _import(services, path, "import-ok") == (0, {"created": 2, "skipped": []})
    path.write_text(HEADER + "ann,ext-ann,Ann,,,,user\ncid,,Cid,,,,user\n")
    assert _import(services, path, "import-ok") == (0, {"created": 1, "skipped": ["ann"]})


def test_a_bad_row_writes_nothing(services: Services, tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_text(HEADER + "dan,,Dan,,,,user\n,,No Name,,,,user\neve,,Eve,,,,king\n")
    code, report = _import(services, path, "import-bad")
    assert code == 1
    assert report["errors"] == [
        "row 3: username: this field is required",
        "row 4: role: must be one of user, moderator, admin",
    ]
    path.write_text(HEADER + "dan,,Dan,,,,user\n")
    assert _import(services, path, "import-bad") == (0, {"created": 1, "skipped": []})
