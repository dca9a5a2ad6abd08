"""Limits on a real server: frame size (1009), rate limit (rate_limited, then 1008 for floods),
the connection cap (handshake refused), heartbeats and the idle timeout."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from serving.bundle import write_scripted_bundle
from tests.server_helpers import (
    ServerProcess,
    ask,
    connect,
    receive,
    register,
    run,
    start_server,
    wait_until,
)

LIMITS = {"BOSSLAB_MAX_MESSAGE_BYTES": "2048", "BOSSLAB_RATE_LIMIT_PER_SECOND": "20",
          "BOSSLAB_RATE_LIMIT_BURST": "10", "BOSSLAB_MAX_CONNECTIONS": "3",
          "BOSSLAB_HEARTBEAT_INTERVAL": "0.3", "BOSSLAB_IDLE_TIMEOUT": "1.5"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("limits")
    running = start_server(tmp, write_scripted_bundle(tmp / "bundle"), env=LIMITS)
    yield running
    running.stop()


def _no_sockets(server: ServerProcess) -> bool:
    return bool(httpx.get(f"{server.url}/api/v1/health").json()["open_sockets"] == 0)


def test_frames_over_the_size_limit_close_with_1009(server: ServerProcess) -> None:
    game = register(server.url)

    async def body() -> int | None:
        ws, _ = await connect(server.ws_url, game)
        assert (await ask(ws, "heartbeat", {"client_time": 1.0}))["type"] == "heartbeat"
        await ws.send(json.dumps({"type": "heartbeat", "data": {}, "pad": "x" * 3000}))
        with pytest.raises(ConnectionClosed):
            await receive(ws, "never")
        return ws.close_code

    assert run(body()) == 1009


def test_messages_over_the_rate_get_rate_limited_and_a_flood_is_closed(
        server: ServerProcess) -> None:
    game = register(server.url)

    async def body() -> tuple[list[tuple[str, str]], int | None]:
        ws, _ = await connect(server.ws_url, game)
        for i in range(200):
            await ws.send(json.dumps({"type": "heartbeat", "request_id": f"f{i}", "data": {}}))
        answers = []
        with pytest.raises(ConnectionClosed):
            while True:
                message = await receive(ws, timeout=10)
                answers.append((message["data"].get("code", message["type"]),
                                message["request_id"]))
        return answers, ws.close_code

    answers, code = run(body())
    assert code == 1008
    limited = [int(rid[1:]) for kind, rid in answers if kind == "rate_limited"]
    assert limited[0] >= 10  # the burst passes
    assert limited == list(range(limited[0], limited[0] + 11))  # burst + 1 refusals: a flood
    assert answers[-1][0] == "rate_limited"  # the error comes before the close
    assert all(int(rid[1:]) <= limited[-1] for _, rid in answers)  # the rest is never read


def test_a_client_that_backs_off_is_served_again(server: ServerProcess) -> None:
    game = register(server.url)

    async def body() -> None:
        ws, _ = await connect(server.ws_url, game)
        for i in range(15):
            await ws.send(json.dumps({"type": "heartbeat", "request_id": f"b{i}", "data": {}}))
        answers = [await receive(ws) for _ in range(15)]  # in any order
        assert {a["request_id"] for a in answers} == {f"b{i}" for i in range(15)}
        limited = [a for a in answers if a["type"] == "error"]
        assert limited and all(a["data"]["code"] == "rate_limited" for a in limited)
        assert "slow down" in limited[0]["data"]["message"]
        await asyncio.sleep(0.6)  # the bucket refills (20/s): the pause is the behaviour
        assert (await ask(ws, "heartbeat", {}))["type"] == "heartbeat"
        await ws.close()

    run(body())


def test_connections_over_the_limit_are_refused(server: ServerProcess) -> None:
    game = register(server.url)
    wait_until(lambda: _no_sockets(server), 10, "earlier sockets to close")

    async def body() -> None:
        sockets = [(await connect(server.ws_url, game))[0] for _ in range(3)]
        with pytest.raises(InvalidStatus) as refused:
            await connect(server.ws_url, game)
        assert refused.value.response.status_code == 503
        assert b"maximum" in refused.value.response.body
        await sockets.pop().close()
        for _ in range(100):  # the server releases the slot once the close completes
            try:
                ws, _ = await connect(server.ws_url, game)
                break
            except InvalidStatus:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("the freed connection slot was never reused")
        for open_socket in [*sockets, ws]:
            await open_socket.close()

    run(body())


def test_server_heartbeats_and_the_idle_timeout(server: ServerProcess) -> None:
    game = register(server.url)

    async def body() -> tuple[int, float, int | None]:
        ws, _ = await connect(server.ws_url, game)
        started = time.monotonic()
        beats = 0
        with pytest.raises(ConnectionClosed):
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert message["type"] == "heartbeat" and message["data"]["server_time"]
                beats += 1
        return beats, time.monotonic() - started, ws.close_code

    beats, lasted, code = run(body())
    assert code == 1000 and 1.3 < lasted < 4.0
    assert beats >= 3  # every 0.3 s while idle


def test_client_heartbeats_keep_a_socket_open(server: ServerProcess) -> None:
    game = register(server.url)

    async def body() -> None:
        ws, _ = await connect(server.ws_url, game)
        deadline = time.monotonic() + 2.5  # longer than the 1.5 s idle timeout
        while time.monotonic() < deadline:
            assert (await ask(ws, "heartbeat", {}))["type"] == "heartbeat"
            await asyncio.sleep(0.4)
        await ws.close()

    run(body())
