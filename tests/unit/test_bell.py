"""Doorbells: a ring wakes every listener of its kind on this host, and nobody else."""

from __future__ import annotations

import socket
from pathlib import Path

from comfyfleet import bell


async def test_a_ring_wakes_the_listeners_of_its_kind(tmp_path: Path) -> None:
    where = tmp_path / "bells"
    work = [bell.Bell(where, bell.WORK).open(), bell.Bell(where, bell.WORK).open()]
    dispatch = bell.Bell(where, bell.DISPATCH).open()
    try:
        assert not await work[0].wait(0.05)  # nothing rang
        bell.ring(where, bell.WORK)
        assert [await b.wait(2.0) for b in work] == [True, True]
        assert not await dispatch.wait(0.05)
        assert not await work[0].wait(0.05)  # a ring is heard once
    finally:
        for b in (*work, dispatch):
            b.close()
    assert not list(where.iterdir())  # closed listeners leave nothing behind


async def test_ringing_with_nobody_listening_is_harmless(tmp_path: Path) -> None:
    bell.ring(tmp_path / "nowhere", bell.DISPATCH)
    dead = tmp_path / "dispatch-1-dead.sock"  # a listener whose process died without closing
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(dead))
    bell.ring(tmp_path, bell.DISPATCH)
    assert not dead.exists()  # cleared away


def test_each_fleet_has_its_own_bells() -> None:
    assert bell.bell_dir("sqlite:///a.db") != bell.bell_dir("mysql+pymysql://h/db")
    assert bell.bell_dir("sqlite:///a.db") == bell.bell_dir("sqlite:///a.db")
