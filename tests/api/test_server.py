"""The API server's connection cap follows the process's file-descriptor limit."""

from __future__ import annotations

import resource

import pytest

from api import server


@pytest.mark.parametrize(
    "limits, raised, cap",
    [
        ((100, 100), (100, 100), 50),  # a tiny limit: half of it for the process's own files
        ((1024, 4096), (4096, 4096), 3840),  # the soft limit raised to the hard one
        ((1 << 20, 1 << 20), (1 << 20, 1 << 20), server.MAX_CONNECTIONS),
    ],
)
def test_connection_cap(
    monkeypatch: pytest.MonkeyPatch,
    limits: tuple[int, int],
    raised: tuple[int, int],
    cap: int,
) -> None:
    current = list(limits)
    monkeypatch.setattr(resource, "getrlimit", lambda _: tuple(current))
    monkeypatch.setattr(
        resource, "setrlimit", lambda _, value: current.__setitem__(slice(0, 2), value)
    )
    assert server.connection_cap() == cap
    assert tuple(current) == raised
