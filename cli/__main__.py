"""`python -m cli`: the same as the `tally` command."""

from cli.main import cli

cli()
