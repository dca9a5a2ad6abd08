"""Conformance of every registered env, game and player (STYLE practices 5, 6 and 13).

One parametrized module over ``envs.ENV_IDS`` × ``envs.available_games()`` × every persona plus
the ``population`` (an env id whose registration fixes the game runs with that game only):
Gymnasium's and SB3's ``check_env`` with warnings as errors, same-seed determinism across
fights and autoresets, pickling mid-fight, the observation and action-mask contract, the
illegal-move rule, the vector env's batched spaces and ``SAME_STEP`` autoreset, and the
known-answer game. Every rollout is a few hundred steps at most: the module runs in seconds.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Iterator
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.envs.registration import load_env_creator
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from envs.boss_fight import BossFightEnv, BossFightVectorEnv

# Any warning raised while a test runs is a failure, not only inside check_env.
pytestmark = pytest.mark.filterwarnings("error")

PLAYERS = (*envs.available_personas(), "population")
NUM_ENVS = 4
ILLEGAL_PENALTY = 0.05  # the module docstring of envs.boss_fight: "costs a reward of -0.05"
# One 'fights_per_player' short enough that a rollout crosses series (and draws new players).
SERIES = 2

Step = tuple[np.ndarray, float, bool, bool, dict[str, Any]]


def _fixed_game(env_id: str) -> str | None:
    game = gymnasium.spec(env_id).kwargs.get("game")
    return None if game is None else str(game)


def _combos() -> Iterator[Any]:
    for env_id in envs.ENV_IDS:
        fixed = _fixed_game(env_id)
        for game in envs.available_games():
            if fixed is not None and game != fixed:
                continue  # the registration fixes this env's game
            for player in PLAYERS:
                yield pytest.param(env_id, game, player, id=f"{env_id}-{game}-{player}")


COMBOS = list(_combos())
ENV_GAMES = [
    pytest.param(env_id, game, id=f"{env_id}-{game}")
    for env_id in envs.ENV_IDS for game in envs.available_games()
    if _fixed_game(env_id) in (None, game)
]


def _kwargs(env_id: str, game: str, **extra: Any) -> dict[str, Any]:
    kwargs = dict(extra)
    if _fixed_game(env_id) is None:
        kwargs["game"] = game
    return kwargs


def make(env_id: str, game: str, player: str, **extra: Any) -> gymnasium.Env[Any, Any]:
    return gymnasium.make(env_id, **_kwargs(env_id, game, player=player,
                                            fights_per_player=SERIES, **extra))


def bare(env: gymnasium.Env[Any, Any]) -> BossFightEnv:
    inner = env.unwrapped
    assert isinstance(inner, BossFightEnv)
    return inner


def random_actions(env: gymnasium.Env[Any, Any], count: int, seed: int = 0) -> np.ndarray:
    """Uniform over the whole action space, so illegal moves are played too."""
    space = env.action_space
    assert isinstance(space, spaces.Discrete)
    return np.random.default_rng(seed).integers(0, int(space.n), size=count)


def rollout(env: gymnasium.Env[Any, Any], actions: np.ndarray, seed: int | None,
            fights: int) -> list[Step]:
    """Reset (with ``seed`` unless None), then play ``actions`` until ``fights`` fights end.

    After each fight the env is reset without a seed, as a training loop does; the reset
    observation is recorded as a step with reward 0.
    """
    if seed is not None:
        obs, info = env.reset(seed=seed)
    else:
        obs, info = np.empty(0), {}
    steps: list[Step] = [(obs, 0.0, False, False, info)]
    ended = 0
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        steps.append((obs, float(reward), terminated, truncated, info))
        if terminated or truncated:
            ended += 1
            if ended == fights:
                return steps
            obs, info = env.reset()
            steps.append((obs, 0.0, False, False, info))
    raise AssertionError(f"only {ended} of {fights} fights ended in {len(actions)} steps")


def assert_same_steps(first: list[Step], second: list[Step]) -> None:
    assert len(first) == len(second)
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        np.testing.assert_array_equal(a[0], b[0], err_msg=f"observation {i}")
        assert a[1:] == b[1:], f"step {i}: (reward, terminated, truncated, info) differ"


# --- the checkers ----------------------------------------------------------------------------


@pytest.mark.parametrize(("env_id", "game", "player"), COMBOS)
def test_gymnasium_and_sb3_check_env_without_warnings(env_id: str, game: str,
                                                      player: str) -> None:
    env = make(env_id, game, player)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gymnasium_check_env(env.unwrapped)
        sb3_check_env(env, warn=True)


@pytest.mark.parametrize("render_mode", ["ansi", "rgb_array"])
@pytest.mark.parametrize("game", envs.available_games())
def test_check_env_with_each_render_mode(game: str, render_mode: str) -> None:
    env = gymnasium.make("bosslab/BossFight-v0", game=game, render_mode=render_mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gymnasium_check_env(env.unwrapped)


# --- determinism and pickling ----------------------------------------------------------------


@pytest.mark.parametrize(("env_id", "game", "player"), COMBOS)
def test_same_seed_same_trajectory_across_fights_and_players(env_id: str, game: str,
                                                             player: str) -> None:
    first, second, other = (make(env_id, game, player) for _ in range(3))
    actions = random_actions(first, 3000)
    fights = 2 * SERIES + 1  # crosses two series boundaries, so new players are drawn
    trajectory = rollout(first, actions, seed=11, fights=fights)
    assert_same_steps(trajectory, rollout(second, actions, seed=11, fights=fights))
    # Another seed: another trajectory (starting distances, draws and players all differ).
    different = rollout(other, actions, seed=12, fights=fights)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(trajectory, different,
                                                             strict=False))


@pytest.mark.parametrize(("env_id", "game", "player"), COMBOS)
def test_pickled_env_continues_identically(env_id: str, game: str, player: str) -> None:
    env = make(env_id, game, player)
    actions = random_actions(env, 3000, seed=1)
    env.reset(seed=5)
    for action in actions[:2]:  # two exchanges: mid-fight in every game (none ends this fast)
        _, _, terminated, truncated, _ = env.step(action)
        assert not (terminated or truncated)
    clone = pickle.loads(pickle.dumps(env))
    # The original runs first: had the clone shared state with it, it would start elsewhere.
    original = rollout(env, actions[2:], seed=None, fights=3)
    assert_same_steps(original, rollout(clone, actions[2:], seed=None, fights=3))


# --- the observation, the mask and the illegal-move rule -------------------------------------


@pytest.mark.parametrize(("env_id", "game", "player"), COMBOS)
def test_observations_in_space_and_always_a_legal_move(env_id: str, game: str,
                                                       player: str) -> None:
    env = make(env_id, game, player)
    moves = len(bare(env).layout.moves)
    for obs, *_ in rollout(env, random_actions(env, 3000, seed=2), seed=3, fights=4):
        assert obs.dtype == np.float32
        assert env.observation_space.contains(obs), obs
        mask = bare(env).action_masks()
        assert mask.dtype == np.bool_ and mask.shape == (moves,)
        assert mask.any(), "no legal move"


def _free_move(env: BossFightEnv, obs: np.ndarray) -> int:
    """The phase's free move (no cooldown, no stamina cost), read from the game definition."""
    game = env.setup.game
    phases = {f.name: f for f in env.layout.features}["battle_phase"]
    phase = game.phases[int(np.argmax(obs[phases.start:phases.start + phases.size]))]
    free = [m for m in phase.moves
            if game.moves[m].cooldown == 0 and game.moves[m].stamina_cost == 0]
    return game.move_names.index(free[0])


def _has_illegal_moves(env: BossFightEnv) -> bool:
    game = env.setup.game
    restricted = any(set(game.moves) - set(p.moves) for p in game.phases)
    costly = any(m.cooldown > 0 or m.stamina_cost > 0 for m in game.moves.values())
    return restricted or costly


@pytest.mark.parametrize(("env_id", "game", "player"), COMBOS)
def test_illegal_move_is_replaced_by_the_free_move_at_a_cost(env_id: str, game: str,
                                                             player: str) -> None:
    """Docstring: an illegal move is replaced by the phase's free move and costs -0.05.

    Two envs with one seed: one plays random moves, legal or not; the other plays the free
    move whenever the first plays an illegal one. Everything must agree except the reward,
    which is exactly 0.05 lower for the illegal move.
    """
    played, fixed = make(env_id, game, player), make(env_id, game, player)
    obs, _ = played.reset(seed=21)
    fixed.reset(seed=21)
    illegal = 0
    for action in random_actions(played, 400, seed=4):
        legal = bool(bare(played).action_masks()[action])
        replacement = int(action) if legal else _free_move(bare(played), obs)
        obs, reward, terminated, truncated, info = played.step(action)
        f_obs, f_reward, f_terminated, f_truncated, f_info = fixed.step(replacement)
        np.testing.assert_array_equal(obs, f_obs)
        assert (terminated, truncated, info) == (f_terminated, f_truncated, f_info)
        penalty = 0.0 if legal else ILLEGAL_PENALTY
        assert float(reward) == pytest.approx(float(f_reward) - penalty, abs=1e-12)
        illegal += not legal
        if terminated or truncated:
            obs, _ = played.reset()
            fixed.reset()
    if _has_illegal_moves(bare(played)):
        assert illegal > 20, "the random boss should have played illegal moves"
    else:
        assert illegal == 0


# --- the vector env --------------------------------------------------------------------------


def make_vector(env_id: str, game: str, **extra: Any) -> BossFightVectorEnv:
    """The registered ``vector_entry_point`` with the registered kwargs (what make_vec builds).

    Built directly because ``gymnasium.make_vec`` is broken (see the xfail below).
    """
    spec = gymnasium.spec(env_id)
    assert isinstance(spec.vector_entry_point, str)
    creator = load_env_creator(spec.vector_entry_point)
    env = creator(num_envs=NUM_ENVS, **{**spec.kwargs, **_kwargs(env_id, game, **extra)})
    assert isinstance(env, BossFightVectorEnv)
    return env


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_make_vec_builds_the_vector_env(env_id: str) -> None:
    vector = gymnasium.make_vec(env_id, num_envs=NUM_ENVS,
                                vectorization_mode="vector_entry_point", player="population")
    assert isinstance(vector.unwrapped, BossFightVectorEnv)
    assert vector.unwrapped.num_envs == NUM_ENVS
    single = gymnasium.make(env_id, player="population")
    assert vector.single_observation_space == single.observation_space


def _feature(env: BossFightVectorEnv, obs: np.ndarray, name: str) -> np.ndarray:
    feature = {f.name: f for f in env.layout.features}[name]
    return obs[..., feature.start:feature.start + feature.size]


@pytest.mark.parametrize(("env_id", "game"), ENV_GAMES)
def test_vector_env_batches_spaces_and_masks(env_id: str, game: str) -> None:
    vector = make_vector(env_id, game)
    single = gymnasium.make(env_id, **_kwargs(env_id, game))
    moves = len(vector.layout.moves)
    assert vector.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert vector.single_observation_space == single.observation_space
    assert vector.single_action_space == single.action_space == spaces.Discrete(moves)
    assert vector.observation_space == spaces.Box(0.0, 1.0, (NUM_ENVS, vector.layout.size),
                                                  np.float32)
    assert vector.action_space == spaces.MultiDiscrete([moves] * NUM_ENVS)
    obs, info = vector.reset(seed=0)
    assert vector.observation_space.contains(obs) and info == {}
    masks = vector.action_masks()
    assert masks.shape == (NUM_ENVS, moves) and masks.dtype == np.bool_
    game_definition = vector.setup.game
    first_phase = [name in game_definition.phases[0].moves for name in game_definition.moves]
    # At the start of a fight: no cooldowns, full stamina, so the first phase's moves.
    np.testing.assert_array_equal(masks, np.tile(first_phase, (NUM_ENVS, 1)))


@pytest.mark.parametrize(("env_id", "game"), ENV_GAMES)
def test_vector_env_same_step_autoreset(env_id: str, game: str) -> None:
    vector = make_vector(env_id, game, fights_per_player=SERIES)
    vector.reset(seed=1)
    rng = np.random.default_rng(1)
    ended_total = 0
    for _ in range(250):
        masks = vector.action_masks()
        assert masks.shape == (NUM_ENVS, len(vector.layout.moves)) and masks.any(axis=1).all()
        obs, rewards, terminated, truncated, info = vector.step((rng.random(masks.shape)
                                                                 * masks).argmax(axis=1))
        assert vector.observation_space.contains(obs)
        assert rewards.shape == terminated.shape == truncated.shape == (NUM_ENVS,)
        ended = terminated | truncated
        if not ended.any():
            assert info == {}
            continue
        ended_total += int(ended.sum())
        assert set(info) == {"final_obs", "_final_obs", "final_info", "_final_info"}
        np.testing.assert_array_equal(info["_final_obs"], ended)
        np.testing.assert_array_equal(info["_final_info"], ended)
        final = info["final_obs"]
        assert vector.observation_space.contains(final)
        for values in info["final_info"].values():
            assert np.shape(values) == (NUM_ENVS,)
        # The returned observation of an ended env already starts the next fight...
        np.testing.assert_array_equal(_feature(vector, obs, "boss_health")[ended], 1.0)
        np.testing.assert_array_equal(_feature(vector, obs, "last_boss_action")[ended, 0], 1.0)
        # ... while final_obs is the end of the fight that was just played.
        np.testing.assert_array_equal(_feature(vector, final, "last_boss_action")[ended, 0], 0.0)
        over = ((_feature(vector, final, "boss_health")[:, 0] == 0.0)
                | (_feature(vector, final, "health_percentage")[:, 0] == 0.0))
        np.testing.assert_array_equal(over[ended], terminated[ended])
    assert ended_total >= NUM_ENVS


@pytest.mark.parametrize("game", ["duel", "dragon_keep"])
def test_vector_final_info_describes_the_fight_that_ended(game: str) -> None:
    """With one seed, the vector env's final_info equals the single env's end-of-fight info."""
    kwargs: dict[str, Any] = {"game": game, "player": "population", "fights_per_player": SERIES}
    single = BossFightEnv(**kwargs)
    vector = BossFightVectorEnv(num_envs=1, **kwargs)
    single.reset(seed=9)
    vector.reset(seed=9)
    fights = 0
    for action in np.random.default_rng(9).integers(0, len(single.layout.moves), size=3000):
        _, _, terminated, truncated, info = single.step(action)
        _, _, _, _, v_info = vector.step(np.array([action]))
        if terminated or truncated:
            final = {key: value[0].item() for key, value in v_info["final_info"].items()}
            assert final == info
            single.reset()
            fights += 1
            if fights == 6:
                return
    raise AssertionError("too few fights ended")


def test_vector_env_same_seed_and_pickle() -> None:
    first, second = (make_vector("bosslab/BossFight-v0", "duel") for _ in range(2))
    actions = np.random.default_rng(2).integers(0, len(first.layout.moves), (120, NUM_ENVS))
    first.reset(seed=4)
    second.reset(seed=4)
    for action in actions[:60]:
        a, b = first.step(action), second.step(action)
        for x, y in zip(a[:4], b[:4], strict=True):
            np.testing.assert_array_equal(x, y)
    clone = pickle.loads(pickle.dumps(first))
    rest = [first.step(action)[:4] for action in actions[60:]]
    for action, expected in zip(actions[60:], rest, strict=True):
        for x, y in zip(clone.step(action)[:4], expected, strict=True):
            np.testing.assert_array_equal(x, y)


# --- the known-answer game (STYLE practice 5) ------------------------------------------------


def _fight_outcomes(player: str, choose: Any, fights: int) -> list[str]:
    """Play ``fights`` fights of KnownAnswer-v0; 'boss' when the player died."""
    env = gymnasium.make("bosslab/KnownAnswer-v0", player=player)
    moves = bare(env).layout.moves
    env.reset(seed=0)
    outcomes: list[str] = []
    for step in range(10_000):
        _, _, terminated, truncated, info = env.step(moves.index(choose(step)))
        if terminated or truncated:
            outcomes.append("timeout" if truncated else
                            "player" if info["player_won"] else "boss")
            if len(outcomes) == fights:
                return outcomes
            env.reset()
    raise AssertionError("fights did not end")


@pytest.mark.parametrize("player", PLAYERS)
def test_known_answer_boss_wins_only_with_the_finisher(player: str) -> None:
    assert _fight_outcomes(player, lambda _: "finisher", 20) == ["boss"] * 20
    never = _fight_outcomes(player, lambda step: ("taunt", "wait")[step % 2], 20)
    assert "boss" not in never
    assert set(never) <= {"player", "timeout"}


def test_a_player_switching_style_keeps_their_history_and_plays_the_new_persona() -> None:
    env = BossFightVectorEnv(num_envs=64, player="turtle", objective="engagement",
                             difficulty="normal", fights_per_player=1000)
    env.reset(seed=4)
    rng = np.random.default_rng(4)
    fights = 0
    while fights < 128:  # two fights per player as the turtle
        _, _, terminated, truncated, _ = env.step(rng.integers(0, 3, size=64))
        fights += int((terminated | truncated).sum())
    state = env._state
    history, played = state.history.copy(), state.fights.copy()
    assert played.sum() >= 128
    env.switch_style("dodger", index=np.arange(32))
    assert env.persona_names == ("turtle", "dodger")
    dodge = state.params["dodge_frequency"]
    assert (dodge[:32] > 0.7).all() and (dodge[32:] < 0.3).all()  # dodger 0.85, turtle low
    np.testing.assert_array_equal(state.history, history)  # what the game saw of them stays
    np.testing.assert_array_equal(state.fights, played)
    tags: set[tuple[int, str]] = set()
    for _ in range(200):
        _, _, terminated, truncated, info = env.step(rng.integers(0, 3, size=64))
        if "final_info" in info:
            ended = np.flatnonzero(info["_final_info"])
            tags |= {(int(i) < 32, env.persona_names[int(info["final_info"]["persona"][i])])
                     for i in ended}
    assert tags == {(True, "dodger"), (False, "turtle")}


def test_a_defeat_fights_return_is_its_outcome() -> None:
    """The HP margin shapes the defeat reward as a potential that ends at 0: summed over a
    fight, the rewards are +1 (the player died), -1 (the boss did) or 0 (time ran out)."""
    env = BossFightVectorEnv(64, game="duel", player="population", objective="defeat")
    env.reset(seed=3)
    rng = np.random.default_rng(3)
    returns = np.zeros(64)
    finished: list[tuple[float, float]] = []
    while len(finished) < 200:
        masks = env.action_masks()
        moves = np.where(masks, rng.random(masks.shape), -1.0).argmax(axis=1)  # legal only
        _, rewards, terminated, truncated, info = env.step(moves)
        returns += rewards
        for row in np.flatnonzero(terminated | truncated):
            won = bool(np.asarray(info["final_info"]["player_won"])[row])
            outcome = 0.0 if not terminated[row] else -1.0 if won else 1.0
            finished.append((returns[row], outcome))
            returns[row] = 0.0
    got, expected = np.array(finished).T
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert {-1.0, 1.0} <= set(expected)  # both outcomes were played
