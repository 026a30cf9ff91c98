"""The client's tests run against the process stack of tests/processes."""

from tests.processes.conftest import (  # noqa: F401
    stack,
    stack_database,
    stack_env,
    stack_factory,
    stack_sessions,
    stack_without_workers,
)
