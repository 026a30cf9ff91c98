"""Reading the CSV files the commands take (`tally users import`, `tally award`): one reader,
on the import route's own (shared.intake.bulk_bodies.csv_lines), which names the row at
fault, and the delimiter a file seems to use instead of commas."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from cli.common import plural
from shared.intake.bulk_bodies import BatchInvalid, csv_lines

# Delimiters a spreadsheet may write instead of a comma (a ";" where "," is the decimal mark).
OTHER_DELIMITERS = (";", "\t", "|")


class UnreadableFile(Exception):
    """The file is not CSV of the expected columns: `problems` says where and why."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def rows(
    path: Path, columns: Sequence[str], required: str, *, header: bool
) -> Iterator[tuple[int, dict[str, str]]]:
    """(row number, {column: value}) of each row of `path` that holds data.

    The first row is a header when it names `required` and only `columns`, in any
    order; without one, the rows hold `columns` in their order, unless `header` says
    the file must have one. Values are stripped; blank rows are skipped. A row of
    another width, or a file that is not CSV, raises UnreadableFile.
    """
    names: Sequence[str] = columns
    with path.open(encoding="utf-8-sig", newline="") as stream:
        try:
            for number, raw in csv_lines(stream):
                cells = [cell.strip() for cell in raw]
                if number == 1:
                    named = [cell.lower() for cell in cells]
                    if required in named and set(named) <= set(columns):
                        names = named
                        continue
                    if header:
                        hint = _delimiter_hint(cells, 2)
                        expected = f"a header row naming the columns ({', '.join(columns)})"
                        raise UnreadableFile([f"row 1: {expected}{hint}"])
                if len(cells) != len(names):
                    hint = _delimiter_hint(cells, len(names))
                    width = f"{plural(len(cells), 'column')} where {len(names)} were expected"
                    raise UnreadableFile([f"row {number}: {width} ({', '.join(names)}){hint}"])
                yield number, dict(zip(names, cells, strict=True))
        except BatchInvalid as unreadable:  # not CSV: the row where reading stopped
            (error,) = unreadable.errors
            raise UnreadableFile([f"row {error.position}: {error.message}"]) from None


def _delimiter_hint(cells: list[str], width: int) -> str:
    """`; is the file delimited by ';'?` when the row's text splits into `width` columns
    on another delimiter."""
    joined = ",".join(cells)
    for delimiter in OTHER_DELIMITERS:
        if joined.count(delimiter) >= width - 1 > 0:
            return f"; is the file delimited by {delimiter!r}? tally reads commas"
    return ""
