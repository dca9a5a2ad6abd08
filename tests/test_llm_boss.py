"""The LLM boss against a real OpenAI-compatible HTTP server on loopback (the stub in
tests/openai_stub_server.py, the real openai client), and its MLflow log in a local store."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from agents.llm_boss import (
    NO_KEY,
    LLMBoss,
    LLMConfig,
    LLMServiceError,
    build_prompt,
    llm_baseline,
    llm_status,
    parse_move,
    situation_from_observation,
)
from envs.boss_fight import BossFightVectorEnv
from envs.bosses import BossPolicy, make_boss
from envs.game import GameDefinition, load_game
from envs.observation import ObservationLayout, PlayerContext, Situation
from experiments.llm_log import log_llm_calls
from rag.embedders import NumericContextEmbedder
from rag.memory import EpisodicMemory, MemoryConfig
from tests.openai_stub_server import OpenAIStubServer

KEY = "sk-test-chat"
GAME = load_game("duel")
LAYOUT = ObservationLayout.for_game(GAME)
ATTACK, DEFEND, SPECIAL = (GAME.move_names.index(m) for m in ("attack", "defend", "special_move"))


def fight(player: PlayerContext, distance: float = 3.5) -> Situation:
    return Situation(player=player, boss_health_percentage=0.7, battle_phase="mid_battle",
                     environment="arena", distance=distance, difficulty="normal")


DODGER = PlayerContext(frequent_actions=("light_attack", "dodge"), dodge_frequency=0.85,
                       attack_patterns=("hit_and_run",), movement_style="evasive",
                       reaction_time=0.3, health_percentage=0.8, session_duration=12.0,
                       recent_deaths=1, equipment_level=2)
OTHER_DODGER = PlayerContext(frequent_actions=("light_attack", "dodge"), dodge_frequency=0.75,
                             attack_patterns=("hit_and_run", "counter_attack"),
                             movement_style="evasive", reaction_time=0.34,
                             health_percentage=0.7, session_duration=20.0, recent_deaths=1,
                             equipment_level=3)
RUSHER = PlayerContext(frequent_actions=("light_attack", "heavy_attack"), dodge_frequency=0.3,
                       attack_patterns=("combo", "button_mash"), movement_style="aggressive",
                       reaction_time=0.4, health_percentage=0.8, session_duration=12.0,
                       recent_deaths=1, equipment_level=3)


def rows(*situations: Situation) -> np.ndarray:
    return np.stack([LAYOUT.encode_situation(s) for s in situations])


def distinct_rows(n: int) -> np.ndarray:
    """``n`` observations whose prompts differ (the distance differs by a metre)."""
    return rows(*(fight(DODGER, distance=1.0 + i) for i in range(n)))


def all_legal(n: int) -> np.ndarray:
    return np.ones((n, len(GAME.moves)), dtype=bool)


@pytest.fixture()
def stub() -> Iterator[OpenAIStubServer]:
    with OpenAIStubServer(api_key=KEY) as server:
        yield server


def llm_boss(stub: OpenAIStubServer, api_key: str = KEY, seed: int = 0,
             **options: Any) -> LLMBoss:
    settings: dict[str, Any] = {
        "model": "stub-chat", "base_url": stub.base_url, "cache_path": None,
        "max_retries": 2, "initial_backoff": 0.01, "max_backoff": 0.02, "concurrency": 1,
        **options}
    return LLMBoss(GAME, LLMConfig(**settings), api_key=api_key, seed=seed)


def words(messages: Any) -> int:
    return sum(len(m["content"].split()) for m in messages)


# ------------------------------------------------------------------ answers become moves


def test_valid_answers_become_the_moves_and_every_call_is_recorded(
        stub: OpenAIStubServer) -> None:
    stub.chat_delay = 0.02
    stub.queue_chat('{"move": "defend", "reason": "they rush in"}', "attack",
                    '```json\n{"move": "Special Move", "reason": "they dodge late"}\n```')
    boss = llm_boss(stub, max_tokens=64, temperature=0.0)
    assert isinstance(boss, BossPolicy) and boss.name == "llm:stub-chat"
    moves = boss.select_moves(distinct_rows(3), all_legal(3))
    assert moves.tolist() == [DEFEND, ATTACK, SPECIAL] and moves.dtype == np.int64
    assert not boss.fallbacks
    sent = stub.chat_requests
    assert [r.status for r in sent] == [200, 200, 200]
    assert all(r.body is not None and r.body["model"] == "stub-chat"
               and r.body["temperature"] == 0.0 and r.body["max_tokens"] == 64 for r in sent)
    for call, request in zip(boss.calls, sent, strict=True):
        assert call.valid and call.fallback_reason is None and not call.cached
        assert call.played == call.move and call.attempts == 1
        assert [dict(m) for m in call.messages] == list(request.messages)
        assert call.answer == request.answer
        assert call.prompt_tokens == words(request.messages)  # the response's usage
        assert call.completion_tokens == len(str(request.answer).split())
        assert call.latency_seconds >= 0.02


@pytest.mark.parametrize(("answer", "expected"), [
    ('{"move": "defend", "reason": "x"}', "defend"),
    ('Sure! {"move":"attack","reason":"a"} Good luck.', "attack"),
    ('{"boss_action": "special_move"}', "special_move"),
    ('{"move": "attack", "reason": "cut off by max_tok', "attack"),
    ('"Special-Move"', "special_move"),
    ("DEFEND.", "defend"),
    ('{"move": "fireball"}', "fireball"),
    ("fireball", "fireball"),
    ('{"move": ', None),
    ("The boss should attack and then defend.", None),
    ('{"reason": "no move given"}', None),
    ("", None),
    (None, None),
])
def test_answers_are_parsed_leniently(answer: str | None, expected: str | None) -> None:
    assert parse_move(answer, GAME.move_names) == expected


def test_invalid_answers_fall_back_to_the_scripted_boss_and_are_counted(
        stub: OpenAIStubServer) -> None:
    stub.queue_chat('{"move": "fireball"}', '{"move": "special_move"}',
                    "The boss should attack, then defend.", '{"move": ', "",
                    '{"move": "defend"}')
    observations, masks = distinct_rows(6), all_legal(6)
    masks[1, SPECIAL] = False  # on cooldown: the model proposes it anyway
    boss = llm_boss(stub, seed=7)
    moves = boss.select_moves(observations, masks)
    scripted = make_boss("reactive", GAME, seed=7).select_moves(observations, masks)
    assert moves[:5].tolist() == scripted[:5].tolist()
    assert moves[5] == DEFEND
    assert masks[np.arange(6), moves].all()
    assert boss.fallbacks == {"unknown_move": 1, "illegal_move": 1, "unparseable": 3}
    assert [c.fallback_reason for c in boss.calls] == [
        "unknown_move", "illegal_move", "unparseable", "unparseable", "unparseable", None]
    assert [c.move for c in boss.calls[:2]] == ["fireball", "special_move"]
    assert [c.played for c in boss.calls[:5]] == [GAME.move_names[m] for m in scripted[:5]]


# ------------------------------------------------------------------ failures


def test_a_transient_failure_is_retried(stub: OpenAIStubServer) -> None:
    stub.fail_next(500)
    stub.queue_chat('{"move": "defend"}')
    boss = llm_boss(stub)
    assert boss.select_moves(distinct_rows(1), all_legal(1)).tolist() == [DEFEND]
    assert [r.status for r in stub.chat_requests] == [500, 200]
    assert boss.calls[0].attempts == 2 and boss.calls[0].valid
    assert not boss.fallbacks


def test_a_request_that_keeps_failing_falls_back_and_is_not_cached(
        stub: OpenAIStubServer) -> None:
    stub.fail_next(503, 503)
    boss = llm_boss(stub, max_retries=1, seed=3)
    observation = distinct_rows(1)
    moves = boss.select_moves(observation, all_legal(1))
    assert moves.tolist() == make_boss("reactive", GAME, seed=3).select_moves(
        observation, all_legal(1)).tolist()
    assert boss.fallbacks == {"request_failed": 1}
    failed = boss.calls[0]
    assert failed.answer is None and failed.attempts == 2
    assert failed.error is not None and "HTTP 503 in all 2 attempts" in failed.error
    stub.queue_chat('{"move": "attack"}')  # the failure was not cached: asked again
    assert boss.select_moves(observation, all_legal(1)).tolist() == [ATTACK]
    assert [r.status for r in stub.chat_requests] == [503, 503, 200]


def test_too_many_failed_requests_in_a_row_stop_the_boss(stub: OpenAIStubServer) -> None:
    boss = llm_boss(stub, max_retries=0, max_failures_in_a_row=2)
    stub.fail_next(500)
    boss.select_moves(distinct_rows(1), all_legal(1))  # one failure: falls back
    stub.fail_next(500)
    with pytest.raises(LLMServiceError, match=r"2 requests in a row failed.*HTTP 500.*"
                                              r"max_failures_in_a_row"):
        boss.select_moves(distinct_rows(2)[1:], all_legal(1))
    assert boss.fallbacks == {"request_failed": 2}


def test_a_rejected_key_raises_a_clear_error_without_retrying(stub: OpenAIStubServer) -> None:
    boss = llm_boss(stub, api_key="sk-wrong-key")
    with pytest.raises(LLMServiceError) as refused:
        boss.select_moves(distinct_rows(1), all_legal(1))
    message = str(refused.value)
    assert "rejected the API key (HTTP 401)" in message
    assert "export OPENAI_API_KEY=" in message and "llm.base_url" in message
    assert "sk-wrong-key" not in message
    assert [r.status for r in stub.chat_requests] == [401]
    assert boss.calls[-1].fallback_reason == "request_failed"
    assert boss.calls[-1].error == message


def test_a_base_url_without_the_api_root_says_how_to_fix_it(stub: OpenAIStubServer) -> None:
    boss = llm_boss(stub, base_url=stub.base_url.removesuffix("/v1"))
    with pytest.raises(LLMServiceError, match=r"HTTP 404.*llm.base_url to its API root"):
        boss.select_moves(distinct_rows(1), all_legal(1))


# ------------------------------------------------------------------ caching


def test_the_disk_cache_answers_an_identical_decision_without_the_server(
        stub: OpenAIStubServer, tmp_path: Path) -> None:
    cache = str(tmp_path / "answers.sqlite")
    observation = distinct_rows(1)
    stub.queue_chat('{"move": "defend"}')
    first = llm_boss(stub, cache_path=cache)
    assert first.select_moves(observation, all_legal(1)).tolist() == [DEFEND]
    assert len(stub.chat_requests) == 1
    assert first.select_moves(observation, all_legal(1)).tolist() == [DEFEND]
    assert len(stub.chat_requests) == 1  # in memory
    fresh = llm_boss(stub, cache_path=cache)
    assert fresh.select_moves(observation, all_legal(1)).tolist() == [DEFEND]
    assert len(stub.chat_requests) == 1  # a new boss on the same file sent nothing
    hit = fresh.calls[0]
    assert hit.cached and hit.attempts == 0 and hit.prompt_tokens == 0 and hit.valid
    other_model = llm_boss(stub, cache_path=cache, model="other-chat")
    other_model.select_moves(observation, all_legal(1))
    assert len(stub.chat_requests) == 2  # the cache is per model
    llm_boss(stub, cache_path=None).select_moves(observation, all_legal(1))
    assert len(stub.chat_requests) == 3  # no disk cache: a new boss asks again


def test_identical_rows_of_a_batch_share_one_request(stub: OpenAIStubServer) -> None:
    boss = llm_boss(stub, concurrency=4)
    same = np.repeat(distinct_rows(1), 3, axis=0)
    assert boss.select_moves(same, all_legal(3)).tolist() == [ATTACK] * 3  # the stub's default
    assert len(stub.chat_requests) == 1
    assert [c.cached for c in boss.calls] == [False, True, True]


# ------------------------------------------------------------------ the prompt


def test_the_prompt_has_the_vocabulary_the_context_and_the_retrieved_encounters(
        stub: OpenAIStubServer) -> None:
    embedder = NumericContextEmbedder(GAME)
    memory = EpisodicMemory(MemoryConfig(dim=embedder.dim, moves=len(GAME.moves)))
    memory.add(embedder.embed([fight(DODGER), fight(OTHER_DODGER), fight(RUSHER)]),
               moves=[SPECIAL, DEFEND, ATTACK], values=[2.5, -1.0, 0.75],
               outcomes=[1.0, 0.0, 0.5], personas="tag", times=0.0)
    boss = LLMBoss(GAME, LLMConfig(base_url=stub.base_url, cache_path=None, neighbours=2),
                   memory=memory, embedder=embedder, api_key=KEY)
    masks = all_legal(1)
    masks[0, SPECIAL] = False
    boss.select_moves(rows(fight(DODGER)), masks)
    system, user = (m["content"] for m in stub.chat_requests[0].messages)
    for name, move in GAME.moves.items():
        telegraph = move.windup_ticks / GAME.tick_rate
        assert f"- {name}: {move.action_type}, " in system
        assert f"telegraph {telegraph:.2f} s" in system
    assert "cooldown 5 s, stamina 40" in system  # special_move
    assert all(f"- {phase.name}: " in system for phase in GAME.phases)
    assert all(f"- {arena}: " in system for arena in GAME.environments)
    assert all(f"- {level}: " in system for level in GAME.difficulty_levels)
    assert "Warden" in system and '{"move": ' in system
    for fact in ("movement style: evasive", "frequent actions: light_attack, dodge",
                 "attack patterns: hit_and_run", "dodges 85% of", "reaction time: 0.30 s",
                 "health: 80%", "deaths in the last 5 fights: 1", "equipment level: 2 of 10",
                 "difficulty: normal", "battle phase: mid_battle", "arena: arena",
                 "boss health: 70%", "distance to the player: 3.5 m",
                 "Legal moves now: attack, defend\n"):
        assert fact in user
    encounters = user[user.index("Similar past encounters"):]
    assert "1. special_move: return +2.50, the boss won (distance 0.000)" in encounters
    assert "2. defend: return -1.00, the player won" in encounters
    assert "+0.75" not in encounters  # the rusher is the farthest: k=2 leaves it out
    assert "Mean return by move: special_move +2.50 (1x); defend -1.00 (1x)" in encounters


def test_a_prompt_without_memory_has_no_encounters_and_an_empty_memory_says_so() -> None:
    observation, legal = rows(fight(RUSHER))[0], all_legal(1)[0]
    without = build_prompt(GAME, observation, legal)[1]["content"]
    assert "encounters" not in without and "movement style: aggressive" in without
    empty = build_prompt(GAME, observation, legal, encounters=())[1]["content"]
    assert "Similar past encounters: none recorded yet." in empty


def test_an_observation_reads_back_as_the_situation_it_encodes() -> None:
    env = BossFightVectorEnv(num_envs=8, game="duel")
    observations, _ = env.reset(seed=5)
    for step in range(30):
        for row in observations:
            situation = situation_from_observation(LAYOUT, row)
            np.testing.assert_allclose(LAYOUT.encode_situation(situation), row, atol=1e-6)
        observations, *_ = env.step(env.action_masks().argmax(axis=1) if step % 2 else
                                    np.full(8, ATTACK))
    dodger = situation_from_observation(LAYOUT, rows(fight(DODGER))[0])
    assert dodger.player.movement_style == "evasive" and dodger.environment == "arena"
    assert dodger.difficulty == "normal" and dodger.boss.last_action is None


def test_the_llm_boss_plays_real_fights_with_the_moves_its_prompts_call_legal() -> None:
    def last_legal(messages: list[dict[str, Any]]) -> str:
        line = re.search(r"^Legal moves now: (.+)$", messages[-1]["content"], re.MULTILINE)
        assert line is not None
        return json.dumps({"move": line.group(1).split(", ")[-1], "reason": "test"})

    with OpenAIStubServer(api_key=KEY, chat_default=last_legal) as server:
        boss = llm_boss(server, concurrency=4)
        env = BossFightVectorEnv(num_envs=4, game="duel")
        observations, _ = env.reset(seed=2)
        for _ in range(12):
            masks = env.action_masks()
            moves = boss.select_moves(observations, masks)
            expected = len(GAME.moves) - 1 - masks[:, ::-1].argmax(axis=1)
            np.testing.assert_array_equal(moves, expected)  # rows kept their order
            observations, *_ = env.step(moves)
        assert not boss.fallbacks and len(boss.calls) == 48
        assert {c.played for c in boss.calls} == {"special_move", "defend"}


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(("options", "message"), [
    ({"temperature": 3.0}, r"llm.temperature=3.0: use 0 to 2"),
    ({"fallback": "smart"}, r"not a scripted boss: use one of random, rotation, reactive"),
    ({"neighbours": -1}, r"llm.neighbours=-1: use an int >= 0"),
    ({"base_url": "localhost:8000/v1"}, r"not an http\(s\) URL.*http://localhost:8000/v1"),
    ({"max_tokens": 0}, r"llm.max_tokens=0"),
    ({"concurrency": 0}, r"llm.concurrency=0"),
    ({"initial_backoff": 5.0, "max_backoff": 1.0}, r"initial_backoff=5.0 <= max_backoff"),
    ({"api_key_env": "sk-123"}, r"must name an environment variable"),
])
def test_config_mistakes_say_how_to_fix_them(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LLMConfig(**options)


def test_without_a_key_or_base_url_the_baseline_is_skipped_with_a_clear_note(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    status = llm_status(LLMConfig())
    assert not status.available
    assert status.note.startswith("LLM baseline skipped: no chat model endpoint")
    assert "export OPENAI_API_KEY=" in status.note and "llm.base_url=" in status.note
    assert llm_baseline(GAME, LLMConfig()) == (None, status.note)
    with pytest.raises(ValueError, match=r"no API key.*export OPENAI_API_KEY=.*base_url"):
        LLMBoss(GAME, LLMConfig(cache_path=None))
    assert llm_status(LLMConfig(), environ={"OPENAI_API_KEY": "sk-x"}) == (
        True, "LLM baseline: gpt-4o-mini at OpenAI (key from OPENAI_API_KEY).")
    local = llm_status(LLMConfig(base_url="http://localhost:8000/v1"), environ={})
    assert local.available and "a placeholder is sent" in local.note


def test_a_base_url_without_a_key_sends_a_placeholder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with OpenAIStubServer(api_key=NO_KEY) as server:
        boss, note = llm_baseline(GAME, LLMConfig(base_url=server.base_url, cache_path=None))
        assert boss is not None and server.base_url in note
        assert boss.select_moves(distinct_rows(1), all_legal(1)).tolist() == [ATTACK]
        assert [r.status for r in server.chat_requests] == [200]


# ------------------------------------------------------------------ MLflow


@pytest.fixture()
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    previous = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield mlflow.create_experiment("llm-boss-tests",
                                   artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_tracking_uri(previous)


def test_log_llm_calls_writes_every_call_and_the_metrics(stub: OpenAIStubServer,
                                                         tracking: str,
                                                         tmp_path: Path) -> None:
    stub.queue_chat('{"move": "defend"}', '{"move": "fireball"}')
    boss = llm_boss(stub)
    boss.select_moves(distinct_rows(2), all_legal(2))
    boss.select_moves(distinct_rows(1), all_legal(1))  # cached
    with pytest.raises(ValueError, match="needs an active MLflow run"):
        log_llm_calls(boss.calls)
    with mlflow.start_run(experiment_id=tracking) as run:
        returned = log_llm_calls(boss.calls)
    logged = MlflowClient().get_run(run.info.run_id).data.metrics
    assert logged == returned
    tokens = sum(c.total_tokens for c in boss.calls[:2])
    assert tokens > 0
    assert logged["llm/calls"] == 3 and logged["llm/cache_hits"] == 1
    assert logged["llm/fallback_rate"] == pytest.approx(1 / 3)
    assert logged["llm/fallbacks_unknown_move"] == 1 and logged["llm/requests"] == 2
    assert logged["llm/total_tokens"] == tokens
    latencies = [c.latency_seconds for c in boss.calls[:2]]
    assert min(latencies) <= logged["llm/latency_p95_s"] <= max(latencies)
    assert logged["llm/latency_mean_s"] == pytest.approx(np.mean(latencies))
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                artifact_path="llm/calls.jsonl",
                                                dst_path=str(tmp_path / "download"))
    lines = [json.loads(line) for line in Path(local).read_text().splitlines()]
    assert len(lines) == 3
    assert [line["answer"] for line in lines] == ['{"move": "defend"}', '{"move": "fireball"}',
                                                  '{"move": "defend"}']
    assert [line["fallback_reason"] for line in lines] == [None, "unknown_move", None]
    assert [line["cached"] for line in lines] == [False, False, True]
    first = lines[0]
    assert first["messages"][0]["role"] == "system"
    assert "Legal moves now: attack, defend, special_move" in first["messages"][1]["content"]
    assert first["latency_seconds"] > 0 and first["prompt_tokens"] == words(first["messages"])
    assert first["total_tokens"] == first["prompt_tokens"] + first["completion_tokens"]


def test_another_game_brings_its_own_vocabulary(stub: OpenAIStubServer) -> None:
    game: GameDefinition = load_game("dragon_keep")
    boss = LLMBoss(game, LLMConfig(base_url=stub.base_url, cache_path=None, concurrency=1),
                   api_key=KEY)  # one request at a time: the queued answers keep row order
    observations, _ = BossFightVectorEnv(num_envs=2, game=game).reset(seed=0)
    stub.queue_chat('{"move": "Wing Guard"}', '{"move": "attack"}')  # duel's word is unknown
    moves = boss.select_moves(observations, np.ones((2, len(game.moves)), dtype=bool))
    assert moves[0] == game.move_names.index("wing_guard")
    assert [c.fallback_reason for c in boss.calls] == [None, "unknown_move"]
    system, user = (m["content"] for m in stub.chat_requests[0].messages)
    assert all(f"- {name}: " in system for name in (*game.moves, *game.environments))
    assert all(f"- {phase.name}: " in system for phase in game.phases)
    assert f"Legal moves now: {', '.join(game.moves)}" in user
