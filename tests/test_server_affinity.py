"""``--cpus``: the event loop's process on the first CPU listed, the brain and storage
processes on the others, and a server that still answers moves; ``--storage-nice``: the
storage process runs nicer than the event loop and the brain."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serving.affinity import allowed_cpus
from serving.bundle import write_scripted_bundle
from tests.server_helpers import (
    ask,
    connect,
    move_request,
    register,
    run,
    start_server,
    wait_until,
)

pytestmark = pytest.mark.skipif(allowed_cpus() is None, reason="CPU pinning needs Linux")


def children(pid: int) -> list[int]:
    """The server's spawned children (the brain and storage processes), not its resource
    tracker."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            command = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in command:
                found.append(int(child))
    return found


def test_the_server_pins_its_event_loop_and_its_child_processes(tmp_path: Path) -> None:
    cpus = sorted(allowed_cpus() or ())
    first, last = cpus[0], cpus[-1]
    server = start_server(tmp_path, write_scripted_bundle(tmp_path / "bundle"),
                          args=["--cpus", f"{first},{last}"])
    try:
        assert server.process is not None
        assert os.sched_getaffinity(server.process.pid) == {first}
        workers = children(server.process.pid)
        assert len(workers) == 2
        assert [os.sched_getaffinity(pid) for pid in workers] == [{last}, {last}]
        game = register(server.url)

        async def body() -> None:
            ws, _ = await connect(server.ws_url, game)
            answer = await ask(ws, "boss_action_request", move_request())
            assert answer["type"] == "boss_action_response"
            await ws.close()

        run(body())
        assert "pinned: event loop on CPU" in server.logs()
    finally:
        server.stop()


def test_one_child_process_runs_nicer_than_the_event_loop_by_default(tmp_path: Path) -> None:
    """The storage process (tests/test_storage.py checks that it is that one); the brain runs
    as nice as the event loop."""
    server = start_server(tmp_path, write_scripted_bundle(tmp_path / "bundle"))
    try:
        assert server.process is not None
        own = os.getpriority(os.PRIO_PROCESS, server.process.pid)
        pid = server.process.pid

        def niceness() -> list[int]:  # each child sets its own once it has started
            return sorted(os.getpriority(os.PRIO_PROCESS, child) for child in children(pid))

        wait_until(lambda: niceness() == [own, min(19, own + 10)], 30,
                   f"one child at niceness {own + 10} (the default --storage-nice), the other "
                   f"at {own}")
    finally:
        server.stop()
