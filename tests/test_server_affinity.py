"""``--cpus``: the event loop's process on the first CPU listed, the brain and storage
processes on the others, and a server that still answers moves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serving.affinity import allowed_cpus
from serving.bundle import write_scripted_bundle
from tests.server_helpers import ask, connect, move_request, register, run, start_server

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
