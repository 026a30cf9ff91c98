"""The `tally` command line: run the stack, migrate, manage users and tokens."""
