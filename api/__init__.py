"""tally's HTTP API (Flask): thin views over the rules in `shared`."""

from api.app import create_app

__all__ = ["create_app"]
