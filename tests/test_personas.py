"""Personas differ as their names say, measured in the simulator against scripted bosses.

Each claim compares two personas on one observation feature (positions from
``env.layout.features``), averaged per env over a few hundred exchanges of
:class:`envs.boss_fight.BossFightVectorEnv`, and must hold by a wide statistical margin: the
difference of the means over independent envs is at least ``MIN_Z`` standard errors. Seeds are
fixed, so the tests are deterministic; the margin makes sure a claim is not one seed's luck.
Then the adaptive expert's learning over a series, and population sampling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import yaml

from envs.boss_fight import BossFightVectorEnv
from envs.observation import MOVEMENT_STYLES, PLAYER_ACTIONS
from envs.persona import PLAYER_DIR, Persona, load_persona, load_players

REAL_GAMES = ("duel", "dragon_keep")
ENVS = 64  # independent players per measurement
EXCHANGES = 300
WARMUP = 50  # exchanges before the game's running statistics of a player mean much
MIN_Z = 5.0

Boss = Callable[[np.ndarray, np.ndarray], np.ndarray]


def rotation_boss(seed: int) -> Boss:
    """A repetitive boss: the next legal move after its last one, in the game's move order."""
    del seed  # deterministic

    def choose(masks: np.ndarray, last: np.ndarray) -> np.ndarray:
        n, moves = masks.shape
        order = (last[:, None] + 1 + np.arange(moves)) % moves
        first_legal = np.take_along_axis(masks, order, axis=1).argmax(axis=1)
        return order[np.arange(n), first_legal]
    return choose


def random_boss(seed: int) -> Boss:
    """A uniformly random legal move."""
    rng = np.random.default_rng(seed)

    def choose(masks: np.ndarray, last: np.ndarray) -> np.ndarray:
        del last
        return (rng.random(masks.shape) * masks).argmax(axis=1)
    return choose


BOSSES = {"rotation": rotation_boss, "random": random_boss}


def feature(env: BossFightVectorEnv, obs: np.ndarray, name: str, label: str = "") -> np.ndarray:
    """One observation element per env: a value feature, or one label of a block."""
    labels = {"movement_style": MOVEMENT_STYLES, "frequent_actions": PLAYER_ACTIONS}
    found = {f.name: f for f in env.layout.features}[name]
    offset = labels[name].index(label) if label else 0
    return obs[:, found.start + offset]


# What each claim reads: (feature, label); all are in [0, 1] in the observation.
MEASURES = {
    "dodge_frequency": ("dodge_frequency", ""),
    "blocking": ("frequent_actions", "block"),
    "aggressive_style": ("movement_style", "aggressive"),
    "distance": ("distance", ""),
    "reaction_time": ("reaction_time", ""),
}


@cache
def measure(persona: str, game: str, boss: str) -> dict[str, np.ndarray]:
    """Per-env means of every measure over the exchanges after the warm-up."""
    env = BossFightVectorEnv(num_envs=ENVS, game=game, player=persona)
    env.reset(seed=100)
    choose = BOSSES[boss](seed=7)
    last = np.full(ENVS, -1)
    sums = {key: np.zeros(ENVS) for key in MEASURES}
    for exchange in range(EXCHANGES):
        last = choose(env.action_masks(), last)
        obs, _, terminated, truncated, _ = env.step(last)
        last[terminated | truncated] = -1  # the rotation restarts with each fight
        if exchange >= WARMUP:
            for key, (name, label) in MEASURES.items():
                sums[key] += feature(env, obs, name, label)
    return {key: total / (EXCHANGES - WARMUP) for key, total in sums.items()}


def z_score(higher: np.ndarray, lower: np.ndarray) -> float:
    error = np.sqrt(higher.var(ddof=1) / len(higher) + lower.var(ddof=1) / len(lower))
    return float((higher.mean() - lower.mean()) / max(error, 1e-12))


# (more, less, measure): ``more`` shows more of the measure than ``less``.
CLAIMS = [
    ("dodger", "novice", "dodge_frequency"),
    ("turtle", "button_masher", "blocking"),
    ("button_masher", "turtle", "aggressive_style"),
    ("dodger", "rusher", "distance"),  # the rusher fights closer
    ("novice", "adaptive_expert", "reaction_time"),  # the novice reacts slower
]


@pytest.mark.parametrize("boss", sorted(BOSSES))
@pytest.mark.parametrize("game", REAL_GAMES)
@pytest.mark.parametrize(("more", "less", "what"),
                         [pytest.param(*claim, id=f"{claim[0]}>{claim[1]}:{claim[2]}")
                          for claim in CLAIMS])
def test_personas_differ_as_named(more: str, less: str, what: str, game: str,
                                  boss: str) -> None:
    high, low = measure(more, game, boss)[what], measure(less, game, boss)[what]
    z = z_score(high, low)
    assert z > MIN_Z, (f"{game}, {boss} boss: {what} of {more} {high.mean():.3f} vs {less} "
                       f"{low.mean():.3f} (z = {z:.1f})")


# --- learning over a series ----------------------------------------------------------------

SERIES = 10  # fights_per_player
SERIES_ENVS = 1024
SERIES_EACH = 2  # series played per env: 2048 series per measurement
FIRST, LAST = slice(0, 2), slice(SERIES - 3, SERIES)


def win_rates_by_fight(player: Persona, game: str) -> tuple[np.ndarray, np.ndarray]:
    """Player wins and fights by position in the series, against the rotation boss."""
    env = BossFightVectorEnv(num_envs=SERIES_ENVS, game=game, player=player,
                             fights_per_player=SERIES, objective="defeat")
    env.reset(seed=2024)
    choose = rotation_boss(seed=0)
    last = np.full(SERIES_ENVS, -1)
    played = np.zeros(SERIES_ENVS, dtype=int)
    wins, fights = np.zeros(SERIES), np.zeros(SERIES)
    while (played < SERIES * SERIES_EACH).any():
        last = choose(env.action_masks(), last)
        _, _, terminated, truncated, info = env.step(last)
        ended = terminated | truncated
        if ended.any():
            counted = ended & (played < SERIES * SERIES_EACH)
            position = played[counted] % SERIES  # new players come every SERIES fights
            np.add.at(wins, position, info["final_info"]["player_won"][counted])
            np.add.at(fights, position, 1)
            played += ended
            last[ended] = -1
    return wins, fights


def rise(player: Persona, game: str) -> tuple[float, float, str]:
    """Win rate of the last fights minus the first ones, its z score, and a summary."""
    wins, fights = win_rates_by_fight(player, game)
    early = wins[FIRST].sum() / fights[FIRST].sum()
    late = wins[LAST].sum() / fights[LAST].sum()
    error = np.sqrt(early * (1 - early) / fights[FIRST].sum()
                    + late * (1 - late) / fights[LAST].sum())
    z = (late - early) / max(float(error), 1e-12)
    rates = np.round(wins / fights, 3).tolist()
    return late - early, z, f"{player.name} in {game}: win rate by fight {rates}"


@pytest.mark.parametrize("game", REAL_GAMES)
def test_adaptive_expert_learns_a_repetitive_boss_within_a_series(game: str) -> None:
    """The expert's win rate rises over a series; the same player who cannot learn stays flat.

    The control is the adaptive expert with ``pattern_learning: 0`` and nothing else changed,
    so a rise can come only from learning (fights of a series are otherwise independent).
    """
    expert = load_persona("adaptive_expert")
    assert expert.pattern_learning > 0
    control = dataclasses.replace(expert, name="expert_without_learning", pattern_learning=0.0)
    gain, z, summary = rise(expert, game)
    assert gain > 0.05 and z > MIN_Z, summary
    flat_gain, flat_z, flat_summary = rise(control, game)
    assert abs(flat_z) < 3.0 and abs(flat_gain) < 0.03, flat_summary
    assert gain - flat_gain > 0.05


# --- population sampling -------------------------------------------------------------------

DRAWS = 60_000


def bounds() -> tuple[dict[str, float], dict[str, float]]:
    meta = {f.name: f.metadata for f in dataclasses.fields(Persona)}
    low = {name: m["min"] if m.get("min") is not None else -np.inf for name, m in meta.items()}
    high = {name: m["max"] if m.get("max") is not None else np.inf for name, m in meta.items()}
    return low, high


def assert_frequencies(names: tuple[str, ...], drawn: np.ndarray,
                       expected: dict[str, float]) -> None:
    assert set(names) == set(expected)
    for i, name in enumerate(names):
        share = float(np.mean(drawn == i))
        p = expected[name]
        assert abs(share - p) < MIN_Z * np.sqrt(p * (1 - p) / len(drawn)), (name, share, p)


def test_shipped_population_draws_every_member_equally_often() -> None:
    data = yaml.safe_load((PLAYER_DIR / "population.yaml").read_text())
    total = sum(data["members"].values())
    pool = load_players("population")
    drawn, _ = pool.sample(np.random.default_rng(0), DRAWS)
    assert_frequencies(pool.names, drawn,
                       {name: w / total for name, w in data["members"].items()})


def _population(tmp_path: Path, members: dict[str, float], jitter: float) -> Path:
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump({"name": "mix", "members": members, "jitter": jitter},
                                   sort_keys=False))
    return path


def test_population_follows_unequal_weights(tmp_path: Path) -> None:
    pool = load_players(_population(tmp_path, {"dodger": 3, "turtle": 1, "novice": 0.5}, 0.1))
    drawn, _ = pool.sample(np.random.default_rng(1), DRAWS)
    assert_frequencies(pool.names, drawn, {"dodger": 3 / 4.5, "turtle": 1 / 4.5,
                                           "novice": 0.5 / 4.5})


def test_population_jitter_spreads_parameters_within_bounds(tmp_path: Path) -> None:
    """Each parameter of each member spreads to ±jitter of its value, clipped to its bounds."""
    edge = dataclasses.asdict(load_persona("dodger")) | {"name": "edge", "dodge_skill": 1.0,
                                                         "reaction_time": 0.05}
    (tmp_path / "edge.yaml").write_text(yaml.safe_dump(edge))
    jitter = 0.3
    pool = load_players(_population(tmp_path, {"novice": 1, str(tmp_path / "edge.yaml"): 1},
                                    jitter))
    drawn, values = pool.sample(np.random.default_rng(2), DRAWS)
    low, high = bounds()
    names = [f.name for f in dataclasses.fields(Persona) if f.name not in ("name", "description")]
    assert values.shape == (DRAWS, len(names))
    for persona in (load_persona("novice"), load_persona(tmp_path / "edge.yaml")):
        rows = values[drawn == pool.names.index(persona.name)]
        for column, name in enumerate(names):
            base = float(getattr(persona, name))
            expected_low = max(base * (1 - jitter), low[name])
            expected_high = min(base * (1 + jitter), high[name])
            got = rows[:, column]
            assert got.min() >= expected_low - 1e-9 and got.max() <= expected_high + 1e-9, name
            if expected_high - expected_low > 1e-9:  # jittered: reaches near both ends
                span = expected_high - expected_low
                assert got.min() < expected_low + 0.02 * span, (persona.name, name)
                assert got.max() > expected_high - 0.02 * span, (persona.name, name)
    # Parameters at a bound are clipped to it, and often sit on it.
    edge_rows = values[drawn == pool.names.index("edge")]
    assert np.mean(edge_rows[:, names.index("dodge_skill")] == 1.0) > 0.4
    assert np.mean(edge_rows[:, names.index("reaction_time")] == 0.05) > 0.4


def test_a_single_persona_is_not_jittered() -> None:
    pool = load_players("dodger")
    drawn, values = pool.sample(np.random.default_rng(3), 100)
    assert (drawn == 0).all()
    np.testing.assert_array_equal(values, np.tile(pool.parameters[0], (100, 1)))
