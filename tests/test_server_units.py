"""The server's small parts, in milliseconds: habits counted as the simulator counts them, the
rate limit, the latency window, the message codec."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from envs.backend import ScalarOps
from envs.observation import BossState, PlayerContext, Situation
from serving.limits import ALLOW, FLOOD, LIMITED, ConnectionLimit, FloodGuard
from serving.metrics import LatencyWindow
from serving.protocol import (
    ProtocolError,
    encode,
    parse_message,
    peek_request_id,
    situation_from_json,
    situation_json,
)
from serving.service import ActionIds
from serving.sessions import HabitCounter

MOVES = ("attack", "defend", "special_move")


def test_habits_match_the_kernels_counts_and_shares() -> None:
    counter = HabitCounter(MOVES)
    table = [[0.0] * 3 for _ in range(4)]  # the kernel's habits and habits_total
    totals = [0.0] * 4
    last = -1
    for move in ["attack", "attack", "defend", "attack", "special_move", "attack", "defend"]:
        state = counter.boss_state()
        expected = ScalarOps.row_shares(table, totals, last + 1)
        assert state.habits == pytest.approx(expected)
        assert state.last_action == (None if last < 0 else MOVES[last])
        counter.played(move)
        index = MOVES.index(move)
        table[last + 1][index] += 1.0
        totals[last + 1] += 1.0
        last = index
    assert counter.boss_state().habits == pytest.approx([1 / 3, 0.0, 0.0])  # defend->attack


def test_habits_restore_from_a_snapshot() -> None:
    counter = HabitCounter(MOVES)
    for move in ("attack", "defend", "attack"):
        counter.played(move)
    copy = HabitCounter(MOVES, counter.snapshot(), counter.last)
    assert copy.boss_state() == counter.boss_state()


def test_flood_guard_limits_then_floods_and_forgives_a_pause() -> None:
    guard = FloodGuard(rate=10, burst=5, now=0.0)
    assert [guard.check(0.0) for _ in range(5)] == [ALLOW] * 5
    assert [guard.check(0.0) for _ in range(5)] == [LIMITED] * 5
    assert guard.check(0.0) is FLOOD  # burst + 1 refusals without a pause
    calm = FloodGuard(rate=10, burst=5, now=0.0)
    for _ in range(8):
        calm.check(0.0)
    assert calm.check(0.3) is ALLOW  # refilled to half: the strikes are forgiven
    assert calm.strikes == 0


def test_connection_limit() -> None:
    limit = ConnectionLimit(2)
    assert limit.acquire() and limit.acquire() and not limit.acquire()
    limit.release()
    assert limit.acquire()


def test_latency_window_percentiles() -> None:
    window = LatencyWindow(size=100)
    assert window.percentiles() == {"p50": None, "p99": None}
    for value in range(1, 201):
        window.add(float(value))  # only the last 100 are kept: 101..200
    assert window.percentiles() == {"p50": 150.0, "p99": 199.0}


def test_situations_round_trip_through_json() -> None:
    situation = Situation(PlayerContext(frequent_actions=("dodge",), dodge_frequency=0.3),
                          boss_health_percentage=0.4, battle_phase="late_battle",
                          environment="cave", distance=5.0, difficulty="hard")
    stored = json.loads(json.dumps({**situation_json(situation), "habit_counts": [[1.0]]}))
    assert situation_from_json(stored) == situation


def test_situation_json_is_what_asdict_gives() -> None:
    situation = Situation(PlayerContext(attack_patterns=("combo",), recent_deaths=3),
                          difficulty="easy",
                          boss=BossState(stamina=0.5, cooldowns=(0.0, 0.2, 0.0),
                                         last_action="attack", habits=(0.1, 0.2, 0.3)))
    assert situation_json(situation) == asdict(situation)
    assert json.dumps(situation_json(situation)) == json.dumps(asdict(situation))


def test_action_ids_are_unique_within_and_across_runs() -> None:
    first, second = ActionIds("key"), ActionIds("key")
    issued = [first.next("g", i % 3) for i in range(1000)]
    issued += [second.next("g", i % 3) for i in range(1000)]
    assert len(set(issued)) == 2000
    assert all(len(action_id) == 50 and int(action_id, 16) >= 0 for action_id in issued)


def test_action_ids_are_recognised_by_their_signature_alone() -> None:
    ids = ActionIds("key")
    action_id = ids.next("game-a", 2)
    assert ActionIds("key").issued("game-a", action_id) == 2  # another run, same key
    assert ids.issued("game-b", action_id) is None  # issued to another game
    assert ActionIds("other key").issued("game-a", action_id) is None
    tampered = action_id[:33] + "0" + action_id[34:] if action_id[33] != "0" else (
        action_id[:33] + "1" + action_id[34:])
    assert ids.issued("game-a", tampered) is None  # another move index, same MAC
    assert ids.issued("game-a", "x" * 50) is None and ids.issued("game-a", "short") is None


def test_frames_orjson_refuses_get_the_standard_librarys_answers() -> None:
    """Valid frames take orjson's fast path; NaN, Infinity, numbers beyond a double and lone
    surrogates still reach validation (which names the field), as with ``json`` alone."""
    request = {"type": "action_outcome", "request_id": "r1",
               "data": {"action_id": "a" * 50, "outcome": "success", "effectiveness_score": 0.5,
                        "damage_dealt": 1.0, "player_hit": False, "execution_time": 0.5}}
    assert parse_message(json.dumps(request)).data.effectiveness_score == 0.5
    for bad in ("NaN", "Infinity", "1e400"):
        text = json.dumps(request).replace('"effectiveness_score": 0.5',
                                           f'"effectiveness_score": {bad}')
        with pytest.raises(ProtocolError) as refused:
            parse_message(text)
        assert refused.value.request_id == "r1"
        assert "effectiveness_score" in refused.value.message, refused.value.message
    surrogate = json.dumps(request).replace('"success"', '"\\ud800"')
    with pytest.raises(ProtocolError) as odd:
        parse_message(surrogate)
    assert odd.value.code == "invalid_message" and "outcome" in odd.value.message


def test_encode_is_compact_json_and_takes_numpy_numbers() -> None:
    text = encode("heartbeat", {"server_time": "t", "confidence": np.float64(0.25)}, "r")
    assert json.loads(text) == {"type": "heartbeat", "data": {"server_time": "t",
                                                              "confidence": 0.25},
                                "request_id": "r"}
    assert " " not in encode("heartbeat", {"a": [1, 2.5, "x"]})


def test_codec_echoes_request_ids_and_bounds_them() -> None:
    assert peek_request_id('{"request_id": "abc", "type": 5}') == "abc"
    assert peek_request_id("{broken") is None
    with pytest.raises(ProtocolError) as long_id:
        parse_message(json.dumps({"type": "heartbeat", "request_id": "x" * 200}))
    assert long_id.value.code == "invalid_message" and long_id.value.request_id is None
    message = parse_message('{"type": "heartbeat", "request_id": "r"}')
    assert message.type == "heartbeat" and message.request_id == "r"
