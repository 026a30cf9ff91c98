"""tally's Python client."""
