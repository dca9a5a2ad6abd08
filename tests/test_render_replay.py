"""Rendering (ansi, rgb_array) and replays (record_fight, HTML, GIF) of boss fights."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
from stable_baselines3 import DQN, PPO

import envs
from agents.policy import SB3BossPolicy
from agents.retrieval import (
    RetrievalConfig,
    RetrievalPolicyBoss,
    RetrievalVecEnv,
    ValueBlendedBoss,
    dqn_q_values,
)
from agents.vec_env import BossFightVecEnv
from envs import render
from envs.boss_fight import BossFightVectorEnv
from envs.fights import play_fights
from envs.game import load_game
from envs.observation import ObservationLayout, describe_context
from envs.replay import Explanation, Replay, record_fight, script_json
from rag.embedders import NumericContextEmbedder
from rag.memory import EpisodicMemory, MemoryConfig

SEED = 4
MAKE = {"game": "duel", "player": "dodger", "difficulty": "normal", "environment": "arena"}


class FirstLegalBoss:
    """A trivial BossPolicy: always the first legal move."""

    name = "first-legal"

    def select_moves(self, observations: np.ndarray, action_masks: np.ndarray) -> np.ndarray:
        assert observations.shape[0] == action_masks.shape[0] == 1
        return np.argmax(action_masks, axis=1)


def make_env(**kwargs: Any) -> Any:
    assert envs.ENV_IDS  # importing envs registered the ids
    return gymnasium.make("bosslab/BossFight-v0", **{**MAKE, **kwargs})


def values_and_retrieved(observation: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    return {"values": {"attack": float(observation[24]), "defend": 0.25},
            "retrieved": [{"episode": 7, "score": 0.5}, "</script><script>boom()</script>"],
            "legal_count": np.int64(mask.sum())}


@pytest.fixture(scope="module")
def replay() -> Replay:
    return record_fight(make_env(), FirstLegalBoss(), seed=SEED, extras=values_and_retrieved)


def base_frame(**changes: Any) -> render.Frame:
    frame = render.Frame(
        boss_hp=1.0, player_hp=1.0, distance=4.0, arena_size=14.0, seconds=10.0,
        phase="early_battle", arena="arena", move=None, action_type=None, outcome="",
        dealt=0.0, taken=0.0, phase_count=3, max_arena_size=20.0, max_seconds=180.0)
    return replace(frame, **changes)


def changed_region(a: np.ndarray, b: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.nonzero(np.any(a != b, axis=2))
    assert rows.size, "the two pictures are identical"
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


def within(span: slice, low: int, high: int) -> bool:
    """Whether the pixel span ``span`` lies inside [low, high)."""
    return span.start >= low and span.stop <= high


def colour_at(image: np.ndarray, y: int, x: int) -> tuple[int, ...]:
    return tuple(int(c) for c in image[y, x])


# ansi

def hashes_on(text: str, label: str) -> int:
    line = next(line for line in text.splitlines() if line.startswith(label))
    return line[line.index("[") + 1:line.index("]")].count("#")


def test_ansi_shows_both_health_bars_and_they_follow_damage() -> None:
    full = render.ansi(base_frame())
    hurt = render.ansi(base_frame(boss_hp=0.5, player_hp=0.25, move="attack",
                                  action_type="aggressive", outcome="was hit", taken=12.0))
    assert (hashes_on(full, "boss"), hashes_on(full, "player")) == (20, 20)
    assert (hashes_on(hurt, "boss"), hashes_on(hurt, "player")) == (10, 5)
    assert "boss used attack (aggressive); player was hit; player lost 12 HP" in hurt


def test_ansi_through_gymnasium_changes_after_damage() -> None:
    env = make_env(render_mode="ansi")
    env.reset(seed=SEED)
    start = env.render()
    assert isinstance(start, str)
    assert "boss   [" in start and "player [" in start
    hurt_at = None
    for step in range(50):
        env.step(0)
        frame = render.Frame.from_env(env)
        if hurt_at is None and (frame.taken > 0 or frame.dealt > 0):
            hurt_at = step
        after = env.render()
        if (hashes_on(after, "boss"), hashes_on(after, "player")) != (20, 20):
            break
    else:
        pytest.fail("the health bars never showed damage in 50 exchanges")
    assert hurt_at is not None  # the bars moved because somebody was hurt
    assert after != start


# rgb_array

def test_rgb_array_is_an_image() -> None:
    image = render.rgb_array(base_frame())
    assert image.shape == (render.HEIGHT, render.WIDTH, 3)
    assert image.dtype == np.uint8
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 5


def test_rgb_array_health_changes_only_their_own_bars() -> None:
    full = render.rgb_array(base_frame())
    boss_rows, boss_cols = changed_region(full, render.rgb_array(base_frame(boss_hp=0.4)))
    assert within(boss_rows, render.BAR_TOP, render.BAR_BOTTOM)
    assert within(boss_cols, *render.BOSS_BAR)
    rows, cols = changed_region(full, render.rgb_array(base_frame(player_hp=0.4)))
    assert within(rows, render.BAR_TOP, render.BAR_BOTTOM)
    assert within(cols, *render.PLAYER_BAR)


def test_rgb_array_distance_moves_the_player_on_the_floor() -> None:
    near, far = render.rgb_array(base_frame(distance=2.0)), render.rgb_array(base_frame(
        distance=10.0))
    rows, _ = changed_region(near, far)
    assert within(rows, render.FLOOR_TOP, render.FLOOR_BOTTOM)
    player = render.PALETTE["player"]
    near_x = int(np.mean(np.nonzero(np.all(near[render.LINE_Y] == player, axis=1))))
    far_x = int(np.mean(np.nonzero(np.all(far[render.LINE_Y] == player, axis=1))))
    metres_per_pixel = 20.0 / (render.FAR_X - render.CONTACT_X)
    assert (far_x - near_x) * metres_per_pixel == pytest.approx(8.0, abs=0.2)


def test_rgb_array_arena_size_sets_the_far_wall() -> None:
    cave, forest = (render.rgb_array(base_frame(arena_size=size)) for size in (8.0, 20.0))
    y, x = render.LINE_Y + 40, render.FLOOR_RIGHT - 20
    assert colour_at(cave, y, x) == render.PALETTE["out_of_bounds"]
    assert colour_at(forest, y, x) == render.PALETTE["floor"]


@pytest.mark.parametrize("action_type", sorted(render.ACTION_COLOURS))
def test_rgb_array_telegraph_is_coloured_by_action_type(action_type: str) -> None:
    frame = base_frame(move="m", action_type=action_type, reach=3.0)
    image = render.rgb_array(frame)
    marker_y = render.LINE_Y - render.BOSS_RADIUS - 20
    assert colour_at(image, marker_y, render.BOSS_X) == render.ACTION_COLOURS[action_type]
    assert colour_at(render.rgb_array(base_frame()), marker_y, render.BOSS_X) != \
        render.ACTION_COLOURS[action_type]


def test_rgb_array_boss_colour_shows_the_phase() -> None:
    colours = {colour_at(render.rgb_array(base_frame(phase_index=i)), render.LINE_Y,
                         render.BOSS_X) for i in range(3)}
    assert colours == {render.phase_colour(i) for i in range(3)}


def test_rgb_array_shows_dodge_block_and_hit() -> None:
    x = render.CONTACT_X + round(4.0 * (render.FAR_X - render.CONTACT_X) / 20.0)
    dodged = render.rgb_array(base_frame(defence="dodged"))
    assert colour_at(dodged, render.LINE_Y - render.SIDESTEP, x) == render.PALETTE["player"]
    assert colour_at(dodged, render.LINE_Y, x) != render.PALETTE["player"]  # a ghost
    blocked = render.rgb_array(base_frame(defence="blocked"))
    shield_x = x - render.PLAYER_RADIUS - 6
    assert colour_at(blocked, render.LINE_Y, shield_x) == render.PALETTE["shield"]
    hit = render.rgb_array(base_frame(defence="hit"))
    flash = np.all(hit == render.PALETTE["hit_flash"], axis=2)
    assert flash.sum() > 50
    assert not np.all(render.rgb_array(base_frame()) == render.PALETTE["hit_flash"], axis=2).any()


def test_rgb_array_through_gymnasium() -> None:
    env = make_env(render_mode="rgb_array")
    env.reset(seed=SEED)
    first = env.render()
    env.step(0)
    second = env.render()
    assert first.shape == second.shape == (render.HEIGHT, render.WIDTH, 3)
    assert second.dtype == np.uint8
    assert not np.array_equal(first, second)


# record_fight

def play_by_hand(seed: int) -> tuple[list[str], dict[str, Any], Any]:
    """The same fight without record_fight: the moves, the final info, the env."""
    env, policy = make_env(), FirstLegalBoss()
    observation, _ = env.reset(seed=seed)
    moves, ended, info = [], False, {}
    while not ended:
        mask = env.unwrapped.action_masks()
        move = int(policy.select_moves(observation[None], mask[None])[0])
        moves.append(env.unwrapped.setup.game.move_names[move])
        observation, _, terminated, truncated, info = env.step(move)
        ended = terminated or truncated
    return moves, info, env.unwrapped


def test_record_fight_plays_one_fight_to_the_end(replay: Replay) -> None:
    moves, info, fight = play_by_hand(SEED)
    assert [step.move for step in replay.steps] == moves
    assert replay.game == "duel" and replay.boss == "first-legal"
    assert replay.persona == fight.persona_names[info["persona"]] == "dodger"
    outcome = replay.outcome
    assert outcome["ended"] in ("terminated", "timeout")
    assert outcome["player_won"] == info["player_won"]
    assert outcome["fight_seconds"] == pytest.approx(info["fight_seconds"])
    assert outcome["hp_margin"] == pytest.approx(info["hp_margin"])
    assert outcome["difficulty"] == fight.layout.difficulty_levels[info["difficulty"]]
    assert outcome["environment"] == fight.layout.environments[info["environment"]] == "arena"
    assert outcome["steps"] == len(replay.steps)
    assert replay.steps[-1].frame.seconds == pytest.approx(info["fight_seconds"])


def test_record_fight_moves_are_legal_and_frames_follow(replay: Replay) -> None:
    for step in replay.steps:
        assert step.move in step.legal_moves
        assert step.frame.move == step.move  # legal, so the env used it
    seconds = [step.frame.seconds for step in replay.steps]
    assert seconds == sorted(seconds) and len(set(seconds)) == len(seconds)


def test_record_fight_context_is_what_the_policy_saw(replay: Replay) -> None:
    env = make_env()
    env.reset(seed=SEED)
    columns = env.unwrapped.context_columns()
    expected = replace(describe_context(columns._asdict()), difficulty_preference="normal")
    assert replay.steps[0].context == expected
    env.step(env.unwrapped.setup.game.move_names.index(replay.steps[0].move))
    second = describe_context(env.unwrapped.context_columns()._asdict())
    assert replay.steps[1].context.health_percentage == second.health_percentage


def test_record_fight_keeps_extras(replay: Replay) -> None:
    assert all(set(step.extras) == {"values", "retrieved", "legal_count"}
               for step in replay.steps)
    assert replay.steps[0].extras["values"]["defend"] == 0.25


def test_record_fight_cut_short_says_so() -> None:
    short = record_fight(make_env(), FirstLegalBoss(), seed=SEED, max_steps=3)
    assert len(short.steps) == 3
    assert short.outcome["ended"] == "cut_short" and short.outcome["player_won"] is None
    assert short.persona == "dodger"  # a single-persona pool names its player


def test_record_fight_rejects_bad_arguments() -> None:
    class OutOfRange(FirstLegalBoss):
        def select_moves(self, observations: np.ndarray, action_masks: np.ndarray) -> np.ndarray:
            return np.array([99])

    with pytest.raises(ValueError, match="chose move 99"):
        record_fight(make_env(), OutOfRange(), seed=0)
    with pytest.raises(TypeError, match="one BossFightEnv"):
        record_fight(BossFightVectorEnv(num_envs=2), FirstLegalBoss())
    with pytest.raises(ValueError, match="max_steps"):
        record_fight(make_env(), FirstLegalBoss(), max_steps=0)


def test_to_dict_is_plain_json(replay: Replay) -> None:
    data = replay.to_dict()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert data["steps"][0]["extras"]["legal_count"] == len(replay.steps[0].legal_moves)
    assert data["steps"][0]["legal_moves"] == list(replay.steps[0].legal_moves)


# GIF

def test_save_gif_has_one_frame_per_step(replay: Replay, tmp_path: Path) -> None:
    from PIL import Image  # noqa: PLC0415 - an optional dependency, for this test only

    path = replay.save_gif(tmp_path / "fight.gif", fps=5)
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert getattr(gif, "n_frames", 1) == len(replay.steps)
        assert gif.size == (render.WIDTH, render.HEIGHT)
        assert gif.info["duration"] == 200


def test_save_gif_without_pillow_names_the_install(replay: Replay, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match="pip install pillow"):
        replay.save_gif(tmp_path / "fight.gif")


# HTML

def embedded_json(page: str) -> Any:
    match = re.search(r'<script type="application/json" id="replay-data">(.*?)</script>', page,
                      re.S)
    assert match, "no embedded replay"
    return json.loads(match.group(1))


def test_save_html_is_self_contained(replay: Replay, tmp_path: Path) -> None:
    page = replay.save_html(tmp_path / "fight.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert "<script src" not in page and "<link" not in page


def test_save_html_embeds_the_replay_safely(replay: Replay, tmp_path: Path) -> None:
    page = replay.save_html(tmp_path / "fight.html").read_text(encoding="utf-8")
    assert embedded_json(page)["replay"] == replay.to_dict()
    assert page.count("</script>") == 2  # the extras' "</script>" was escaped
    assert "boom()" in page and "<script>boom()" not in page
    for move in {step.move for step in replay.steps}:
        assert f'"move":"{move}"' in page
    assert '"values":{"attack":' in page and '"retrieved":[' in page


def test_script_json_round_trips_hostile_text() -> None:
    hostile = {"x": "</script><!-- & \u2028 >"}
    text = script_json(hostile)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == hostile


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y "
                                             "chromium) so the page's JS cannot be run")
def test_html_page_renders_its_timeline_in_chromium(replay: Replay, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    page = replay.save_html(tmp_path / "fight.html")
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri() + "#step=5"],
        capture_output=True, text=True, timeout=90, check=False)
    dom = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    rows = re.findall(r'<tr class="step-row[^"]*" data-step="(\d+)"', dom)
    assert [int(r) for r in rows] == list(range(len(replay.steps)))
    assert f"Decision 5 of {len(replay.steps)}" in dom  # the #step= link was followed
    current = re.search(r'<tr class="step-row current"[^>]*>', dom)
    assert current is not None and 'data-step="4"' in current.group(0)
    assert "legal_count" in dom and "values: attack" in dom  # extras in the timeline


# Explanations: what a trained boss weighed at each decision

def replayed_observations(replay: Replay, player: str = "dodger") -> list[np.ndarray]:
    """The observation of every decision of ``replay``, by playing its moves again."""
    env = make_env(player=player)
    observation, _ = env.reset(seed=SEED)
    moves, seen = env.unwrapped.setup.game.move_names, []
    for step in replay.steps:
        seen.append(observation)
        observation, *_ = env.step(moves.index(step.move))
    return seen


@pytest.fixture(scope="module")
def ppo_boss(one_torch_thread: None) -> SB3BossPolicy:
    model = PPO("MlpPolicy", tiny_vec_env(), n_steps=8, batch_size=32, seed=0)
    model.learn(64)
    return SB3BossPolicy(model, "tiny-ppo", seed=1)


@pytest.fixture(scope="module")
def memory_of_fights(one_torch_thread: None) -> tuple[ValueBlendedBoss, Replay]:
    """A value-blended DQN whose memory holds its fights against dodgers, and its replay."""
    game = load_game("duel")
    layout, embedder = ObservationLayout.for_game(game), NumericContextEmbedder(game)
    memory = EpisodicMemory(MemoryConfig(dim=embedder.dim, moves=len(layout.moves)))
    dqn = DQN("MlpPolicy", tiny_vec_env(), seed=0)
    boss = ValueBlendedBoss(dqn_q_values(dqn), memory, embedder, RetrievalConfig(k=4),
                            layout=layout, persona_names=())
    play_fights(boss, 4, game=game, player="dodger", series=2)  # the boss writes its memory
    assert len(memory) > 0
    return boss, record_fight(make_env(), boss, seed=SEED)


def tiny_vec_env() -> BossFightVecEnv:
    """Four duel envs for tiny untrained models."""
    return BossFightVecEnv(4, game="duel")


def test_a_trained_ppo_boss_explains_every_decision(ppo_boss: SB3BossPolicy) -> None:
    replay = record_fight(make_env(), ppo_boss, seed=SEED)
    seen = replayed_observations(replay)
    for step, observation in zip(replay.steps, seen, strict=True):
        explained = step.explanation
        assert explained is not None and explained.kind.startswith("action probabilities")
        np.testing.assert_allclose(explained.values, ppo_boss.move_values(observation[None])[0])
        assert sum(explained.values) == pytest.approx(1.0, abs=1e-5)
        state = ppo_boss.state_values(observation[None])
        assert state is not None
        assert explained.scalars["state value"] == pytest.approx(float(state[0]))
        assert explained.neighbours == ()  # no memory
    named = replay.to_dict()["steps"][0]["explanation"]
    assert list(named["values"]) == ["attack", "defend", "special_move"]


def test_a_value_blended_boss_explains_its_blend_and_its_neighbours(
        memory_of_fights: tuple[ValueBlendedBoss, Replay]) -> None:
    boss, replay = memory_of_fights
    personas = set(boss.memory.records().personas.tolist())
    seen = replayed_observations(replay)
    for step, observation in zip(replay.steps, seen, strict=True):
        e = step.explanation
        assert e is not None and e.kind.startswith("blended Q-values")
        np.testing.assert_allclose(e.values, boss.move_values(observation[None])[0], atol=1e-5)
        learned, memory, lam = (np.array(e.parts[k]) for k in ("learned", "memory", "lambda"))
        np.testing.assert_allclose(e.values, lam * learned + (1 - lam) * memory, atol=1e-5)
        assert ((lam >= 0.5 - 1e-9) & (lam <= 1.0)).all()  # lam = 0.5 is the floor
        assert 0 < len(e.neighbours) <= 4 * 3 and e.scalars == {"lam": 0.5, "k": 4}
        found = np.bincount([n.move for n in e.neighbours], minlength=3)
        np.testing.assert_array_equal(found, e.parts["found"])
        for move in np.flatnonzero(found):
            weights = [n.weight for n in e.neighbours if n.move == move]
            assert sum(weights) == pytest.approx(1.0)
        assert {n.persona for n in e.neighbours} <= personas
        assert all(n.outcome in (0.0, 0.5, 1.0) for n in e.neighbours)


def test_a_retrieval_policy_boss_explains_the_features_it_saw() -> None:
    game = load_game("duel")
    layout, embedder = ObservationLayout.for_game(game), NumericContextEmbedder(game)
    memory = EpisodicMemory(MemoryConfig(dim=embedder.dim, moves=len(layout.moves)))
    env = RetrievalVecEnv(tiny_vec_env(), memory, embedder)
    model = PPO("MlpPolicy", env, n_steps=8, batch_size=32, seed=0)
    keys = embedder.embed(replayed_observations(record_fight(make_env(), FirstLegalBoss(),
                                                             seed=SEED))[0][None])
    memory.add(np.repeat(keys, 2, axis=0), [1, 1], [2.0, 4.0], outcomes=0.0,
               personas="dodger", times=0.0)
    boss = RetrievalPolicyBoss(model, memory, embedder, RetrievalConfig(k=2), layout=layout,
                               persona_names=())
    first = record_fight(make_env(), boss, seed=SEED).steps[0].explanation
    assert first is not None and first.kind.startswith("action probabilities")
    assert first.parts["found"] == (0.0, 2.0, 0.0)
    assert first.parts["memory"][1] == pytest.approx(3.0)  # two exact matches, equal weights
    assert [(n.move, n.distance, n.value, n.persona, n.outcome) for n in first.neighbours] == [
        (1, 0.0, 2.0, "dodger", 0.0), (1, 0.0, 4.0, "dodger", 0.0)]
    assert "state value" in first.scalars


def test_an_explanation_that_does_not_fit_the_game_is_refused() -> None:
    class WrongSize(FirstLegalBoss):
        def explain(self, observations: np.ndarray, action_masks: np.ndarray) -> list[Any]:
            return [Explanation(kind="x", values=(1.0, 2.0))]

    with pytest.raises(ValueError, match=r"'values' has 2 entries but the game has 3 moves"):
        record_fight(make_env(), WrongSize(), seed=SEED)
    quiet = record_fight(make_env(), WrongSize(), seed=SEED, explain=False, max_steps=2)
    assert all(step.explanation is None for step in quiet.steps)


def test_the_page_embeds_every_explanation(
        memory_of_fights: tuple[ValueBlendedBoss, Replay], tmp_path: Path) -> None:
    _, replay = memory_of_fights
    data = embedded_json(replay.save_html(tmp_path / "fight.html").read_text(encoding="utf-8"))
    assert data["replay"]["moves"] == ["attack", "defend", "special_move"]
    for step, shown in zip(replay.steps, data["replay"]["steps"], strict=True):
        e, page = step.explanation, shown["explanation"]
        assert e is not None
        assert page["values"] == dict(zip(replay.moves, e.values, strict=True))
        assert set(page["parts"]) == {"learned", "lambda", "memory", "found", "distance"}
        assert [n["id"] for n in page["neighbours"]] == [n.id for n in e.neighbours]
        assert {n["move"] for n in page["neighbours"]} <= set(replay.moves)
        assert all(n["outcome_name"] in ("boss won", "player won", "timeout")
                   for n in page["neighbours"])


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y "
                                             "chromium) so the page's JS cannot be run")
def test_the_decision_panel_shows_values_and_neighbours_in_chromium(
        memory_of_fights: tuple[ValueBlendedBoss, Replay], tmp_path: Path) -> None:
    assert CHROMIUM is not None
    _, replay = memory_of_fights
    page = replay.save_html(tmp_path / "fight.html")
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri() + "#step=3"],
        capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    panel = result.stdout.split('<aside id="decision">', 1)[1].split("</aside>", 1)[0]
    step = replay.steps[2]
    assert step.explanation is not None
    assert "what the boss weighed: blended Q-values" in panel
    assert re.findall(r'<tr[^>]*data-move="([^"]+)"', panel) == list(replay.moves)
    chosen = re.search(r'<tr class="([^"]*)" data-move="' + step.move + '"', panel)
    assert chosen is not None and "chosen" in chosen.group(1)
    nearest = panel.split('class="nearest"', 1)[1]
    assert nearest.count('<tr title="memory entry') == len(step.explanation.neighbours)
    assert f"retrieved ({len(step.explanation.neighbours)} neighbours)" in panel
