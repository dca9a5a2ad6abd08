"""BossFight: a boss chooses its moves against a synthetic player, one exchange per step.

## Description
A game definition (``configs/game/<name>.yaml``) gives the boss's moves (damage, reach,
wind-up that telegraphs the move, active and recovery time, cooldown, stamina cost, how
dodgeable and blockable it is), its phases (HP thresholds that change the moves it may use and
how fast and hard it hits), the arenas and the difficulty levels. A persona or a population
(``configs/player/``) gives the player. Each step the boss commits to a move; the player reads
the telegraph if their reaction time allows (or anticipates a pattern they have learnt), dodges,
blocks, trades blows or is hit, then punishes the opening or heals. Players play a *series* of
fights (``fights_per_player``): what the game has observed of them (the player context) and
what they have learnt of the boss carry over from fight to fight, like a real session.

## Action Space
``Discrete(len(moves))``: the index of the boss's move, in the game file's order. Moves on
cooldown, too expensive for the boss's stamina, or not allowed in the current phase are illegal:
``action_masks()`` returns the legal ones (the convention of sb3-contrib's MaskablePPO). An
illegal move is replaced by the phase's free move and costs a reward of -0.05.

## Observation Space
``Box(0, 1, (n,), float32)``, laid out by :class:`envs.observation.ObservationLayout`
(``layout.names()`` names every element). For the ``duel`` game (n = 43):

| index | name | min | max |
|-------|------|-----|-----|
| 0 | dodge_frequency (share of boss attacks the player dodged) | 0 | 1 |
| 1 | reaction_time (seconds / 2) | 0 | 1 |
| 2 | health_percentage (player) | 0 | 1 |
| 3 | session_duration (minutes / 60) | 0 | 1 |
| 4 | recent_deaths (player deaths in the last 5 fights / 5) | 0 | 1 |
| 5 | equipment_level (/ 10) | 0 | 1 |
| 6 | boss_health | 0 | 1 |
| 7 | distance (metres / 20) | 0 | 1 |
| 8 | boss_stamina | 0 | 1 |
| 9-14 | frequent_actions (light_attack, heavy_attack, ranged_attack, dodge, block, heal) | 0 | 1 |
| 15-19 | attack_patterns (combo, hit_and_run, ranged_poke, counter_attack, button_mash) | 0 | 1 |
| 20-22 | cooldowns (attack, defend, special_move; remaining / cooldown) | 0 | 1 |
| 23-25 | move_habits (attack, defend, special_move; count / (all + 2)) | 0 | 1 |
| 26-29 | movement_style (aggressive, defensive, balanced, evasive) | 0 | 1 |
| 30-32 | difficulty (easy, normal, hard) | 0 | 1 |
| 33-35 | battle_phase (early_battle, mid_battle, late_battle) | 0 | 1 |
| 36-38 | environment (arena, forest, cave) | 0 | 1 |
| 39-42 | last_boss_action (none, attack, defend, special_move) | 0 | 1 |

The protocol's ``player_context`` (with the request's ``difficulty``) gives indices 0-5, 9-19
and 26-32; the rest of a ``boss_action_request`` gives 6, 7, 33-38; the boss's own state
(stamina, cooldowns, habits, last move) gives 8, 20-25 and 39-42. The habits let a boss see how
predictable it has been to this player: players who learn patterns (a persona's
``pattern_learning``) anticipate the moves a boss makes most often after a given move.

## Rewards
- ``objective="defeat"``: +1 when the player dies, -1 when the boss does, shaped by the HP
  margin ``boss HP - player HP`` (fractions) as a potential: each step adds the change of the
  margin, which counts as 0 once the fight has ended. A fight's return is therefore its
  outcome minus the starting margin (0): the damage race guides learning without changing what
  is optimal (winning; Ng, Harada and Russell 1999).
- ``objective="engagement"``: at the end of a fight only, ``0.5 * close + 0.5 * duration +
  steer``: ``close`` is 1 when |boss HP - player HP| (fractions) is within the level's
  ``target_hp_margin``, ``duration`` is 1 inside the level's ``target_duration``, and
  ``steer = 16 * (won - target) * (target - recent)`` rewards the outcome that moves the
  player's win rate over their last 5 fights (``recent``) toward the level's
  ``target_player_win_rate`` (``won`` is 1 when the player won).
- Both: -0.05 for an illegal move.

## Starting State
Boss at full HP (times the level's ``boss_hp``) and stamina, no cooldowns, first phase; player
at full HP with the game's heals, 3-8 m away (within the arena). Difficulty and arena are drawn
uniformly per fight unless fixed. A new player is drawn from the persona/population (with its
jitter) at ``reset(seed=...)`` and after every ``fights_per_player`` fights.

## Episode End
- Termination: the boss's or the player's HP reaches 0 (if both, the player wins).
- Truncation: fight time reaches the game's ``max_fight_seconds`` (a timeout, no winner).
At the end, ``info`` holds ``player_won``, ``fight_seconds``, ``hp_margin`` (boss minus player
HP fraction), ``persona``, ``difficulty`` and ``environment`` (indices; see ``persona_names``,
``layout.difficulty_levels``, ``layout.environments``), and ``series_ended`` (the fight was the
last of its player's series: the next one starts with a new player).

## Arguments
- ``game``: a game name in ``configs/game/``, a YAML path, a mapping or a ``GameDefinition``.
- ``player``: a persona or population name in ``configs/player/``, a path, a mapping or object.
- ``objective``: ``"engagement"`` (default) or ``"defeat"``.
- ``difficulty``, ``environment``: a level / arena name, or ``None`` to draw one per fight.
- ``fights_per_player``: fights in one player's series (default 10).
- ``render_mode``: ``"ansi"`` or ``"rgb_array"``.
- ``max_episode_steps`` (vector env only; ``gymnasium.make_vec`` passes the registered one):
  decisions after which a fight is truncated, as ``TimeLimit`` does for the single env. Such a
  cut is a safety net (the fight timer ends fights first) and does not count in the series.

The vector version (``gymnasium.make_vec``, or :class:`BossFightVectorEnv`) steps every env with
one numpy call of the same kernel and resets ended envs in the same step (``final_obs`` and
``final_info`` in ``info``, Gymnasium's ``SAME_STEP`` autoreset).

## Example
>>> import gymnasium, envs
>>> env = gymnasium.make("bosslab/BossFight-v0", game="duel", player="dodger", difficulty="normal")
>>> obs, info = env.reset(seed=0)
>>> obs, reward, terminated, truncated, info = env.step(0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs import render
from envs.backend import BatchOps, ScalarOps
from envs.game import GameDefinition, GameTables, load_game
from envs.kernel import (
    RANDOM_DRAWS,
    FightConfig,
    FightState,
    StepResult,
    context,
    draw_players,
    legal_moves,
    start_fights,
    start_players,
    step,
)
from envs.observation import ObservationLayout
from envs.persona import PlayerPool, load_players

OBJECTIVES = ("engagement", "defeat")


@dataclass(frozen=True)
class FightSetup:
    """Everything fixed for an env's lifetime, resolved and validated from its arguments."""

    game: GameDefinition
    tables: GameTables
    layout: ObservationLayout
    pool: PlayerPool
    config: FightConfig

    @classmethod
    def create(cls, game: Any, player: Any, objective: str, difficulty: str | None,
               environment: str | None, fights_per_player: int) -> FightSetup:
        definition = load_game(game)
        if objective not in OBJECTIVES:
            raise ValueError(
                f"unknown objective {objective!r}: use one of {', '.join(OBJECTIVES)}."
            )
        if fights_per_player < 1:
            raise ValueError(f"fights_per_player must be >= 1, got {fights_per_player}.")
        config = FightConfig(
            objective=objective,
            difficulty=_option_index(definition.difficulty_levels, difficulty, "difficulty"),
            arena=_option_index(definition.environments, environment, "environment"),
            fights_per_player=fights_per_player,
        )
        return cls(definition, GameTables.from_game(definition),
                   ObservationLayout.for_game(definition), load_players(player), config)

    @property
    def observation_space(self) -> spaces.Box:
        return spaces.Box(0.0, 1.0, shape=(self.layout.size,), dtype=np.float32)

    @property
    def action_space(self) -> spaces.Discrete:
        return spaces.Discrete(len(self.game.moves))

    def fight_info(self, state: FightState, result: StepResult, row: Any) -> dict[str, Any]:
        """What ended fights report in ``info``: the outcome and the conditions."""
        return {
            "player_won": _at(result.player_won, row), "fight_seconds": _at(state.time, row),
            "hp_margin": _at(result.hp_margin, row), "persona": _at(state.persona, row),
            "difficulty": _at(state.difficulty, row), "environment": _at(state.arena, row),
            "series_ended": _at(state.fights >= self.config.fights_per_player, row),
        }


def _at(value: Any, row: Any) -> Any:
    # A copy: the vector env resets ended rows in place right after reporting them.
    return value if row is None else np.array(value[row])


def _option_index(options: dict[str, Any], name: str | None, what: str) -> int:
    if name is None:
        return -1
    if name not in options:
        raise ValueError(f"unknown {what} {name!r}: this game has {', '.join(options)} "
                         f"(or None to draw one per fight).")
    return list(options).index(name)


class BossFightEnv(gym.Env[np.ndarray, np.int64]):
    """One boss against one synthetic player at a time (see the module docstring)."""

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(self, game: Any = "duel", player: Any = "population",
                 objective: str = "engagement", difficulty: str | None = None,
                 environment: str | None = None, fights_per_player: int = 10,
                 render_mode: str | None = None) -> None:
        self.setup = FightSetup.create(game, player, objective, difficulty, environment,
                                       fights_per_player)
        self.layout = self.setup.layout
        self.persona_names = self.setup.pool.names
        self.observation_space = self.setup.observation_space
        self.action_space = self.setup.action_space
        self.render_mode = _check_render_mode(render_mode, self.metadata)
        self._ops = ScalarOps()
        self._tables = self.setup.tables.as_tuples()
        self._rules = self.setup.game.player
        self._config = self.setup.config
        self._state = FightState.empty(1, len(self.setup.game.moves), scalar=True)
        self._last: StepResult | None = None
        self._needs_player = True

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        s, setup, only = self._state, self.setup, np.zeros(1, dtype=int)
        asked = bool((options or {}).get("new_player"))
        new_player = seed is not None or self._needs_player or asked
        if new_player or s.fights >= setup.config.fights_per_player:
            start_players(s, only, setup.pool, setup.game.player, self.np_random)
            self._needs_player = False
        start_fights(s, only, self._tables, setup.config, setup.game.player, self.np_random)
        self._last = None
        return self._observe(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        draws = self._ops.uniform(self.np_random, RANDOM_DRAWS)
        result = step(self._state, int(action), self._tables, self._rules, self._config,
                      self._ops, draws)
        self._last = result
        ended = result.terminated or result.truncated
        info = self.setup.fight_info(self._state, result, None) if ended else {}
        return self._observe(), result.reward, result.terminated, result.truncated, info

    def action_masks(self) -> np.ndarray:
        """Legal moves now, as a boolean vector (sb3-contrib's MaskablePPO convention)."""
        return np.array(legal_moves(self._state, self._tables, self._ops), dtype=bool)

    def context_columns(self) -> Any:
        """The player context and boss state behind the current observation, in numbers."""
        return context(self._state, self._tables, self._ops)

    def render(self) -> Any:
        frame = render.Frame.from_state(self.setup, self._state, self._last)
        if self.render_mode == "ansi":
            return render.ansi(frame)
        if self.render_mode == "rgb_array":
            return render.rgb_array(frame)
        return None

    def _observe(self) -> np.ndarray:
        return self.layout.encode(context(self._state, self._tables, self._ops), self._ops)


class BossFightVectorEnv(VectorEnv[np.ndarray, np.ndarray, np.ndarray]):
    """``num_envs`` boss fights stepped together by one numpy call of the shared kernel."""

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4,
                "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int = 1, game: Any = "duel", player: Any = "population",
                 objective: str = "engagement", difficulty: str | None = None,
                 environment: str | None = None, fights_per_player: int = 10,
                 render_mode: str | None = None, max_episode_steps: int | None = None) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}.")
        self.setup = FightSetup.create(game, player, objective, difficulty, environment,
                                       fights_per_player)
        self.layout = self.setup.layout
        self.persona_names = self.setup.pool.names
        self.num_envs = num_envs
        # Decisions after which a fight is truncated, as gymnasium's TimeLimit does for the
        # single env (gymnasium.make_vec passes the registered max_episode_steps).
        self.max_episode_steps = max_episode_steps
        self.single_observation_space = self.setup.observation_space
        self.single_action_space = self.setup.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.render_mode = _check_render_mode(render_mode, self.metadata)
        self._ops = BatchOps(num_envs)
        self._tables = self.setup.tables
        self._state = FightState.empty(num_envs, len(self.setup.game.moves), scalar=False)
        self._last: StepResult | None = None

    def reset(self, *, seed: int | list[int] | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        if isinstance(seed, list):
            seed = seed[0]
        super().reset(seed=seed)
        every = np.arange(self.num_envs)
        start_players(self._state, every, self.setup.pool, self.setup.game.player,
                      self.np_random)
        start_fights(self._state, every, self._tables, self.setup.config,
                     self.setup.game.player, self.np_random)
        self._last = None
        return self._observe(), {}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                          dict[str, Any]]:
        s, setup = self._state, self.setup
        draws = self._ops.uniform(self.np_random, RANDOM_DRAWS)
        result = step(s, np.asarray(actions, dtype=np.int64), self._tables, setup.game.player,
                      setup.config, self._ops, draws)
        self._last = result
        truncated = result.truncated
        if self.max_episode_steps is not None:
            truncated = truncated | (s.decisions >= self.max_episode_steps)
        ended = result.terminated | truncated
        observations = self._observe()
        infos: dict[str, Any] = {}
        if ended.any():
            index = np.flatnonzero(ended)
            final = np.zeros_like(observations)
            final[index] = observations[index]
            infos = {"final_obs": final, "_final_obs": ended,
                     "final_info": setup.fight_info(s, result, slice(None)),
                     "_final_info": ended}
            start_players(s, index[s.fights[index] >= setup.config.fights_per_player],
                          setup.pool, setup.game.player, self.np_random)
            start_fights(s, index, self._tables, setup.config, setup.game.player,
                         self.np_random)
            observations[index] = self._observe_rows(index)
        return (observations, result.reward.astype(np.float64), result.terminated.copy(),
                truncated & ~result.terminated, infos)

    def switch_style(self, player: Any, index: np.ndarray | None = None) -> None:
        """The players of ``index`` (default: all) change style mid-series: from now on they
        play as ``player`` (a persona or population, drawn with its jitter), while what the
        game observed of them and what they learnt of the boss carry on. Their fights are
        tagged with the new persona (its names are appended to ``persona_names``). Players
        who start a new series later are drawn from the env's own ``player`` again."""
        pool = load_players(player)
        rows = np.arange(self.num_envs) if index is None else np.asarray(index, dtype=np.int64)
        offset = len(self.persona_names)
        self.persona_names = (*self.persona_names, *pool.names)
        draw_players(self._state, rows, pool, self.setup.game.player, self.np_random, offset)

    def _observe_rows(self, index: np.ndarray) -> np.ndarray:
        """Observations of the envs in ``index`` only."""
        ops = BatchOps(len(index))
        return self.layout.encode(context(self._state.take(index), self._tables, ops), ops)

    @property
    def last_step(self) -> StepResult | None:
        """What the last step resolved, per env (hits, damage, move durations); None after a
        reset."""
        return self._last

    def action_masks(self) -> np.ndarray:
        """Legal moves of every env, shape (num_envs, moves)."""
        return legal_moves(self._state, self._tables, self._ops)

    def context_columns(self) -> Any:
        return context(self._state, self._tables, self._ops)

    def render(self) -> Any:
        frame = render.Frame.from_state(self.setup, self._state, self._last, row=0)
        if self.render_mode == "ansi":
            return render.ansi(frame)
        if self.render_mode == "rgb_array":
            return render.rgb_array(frame)
        return None

    def _observe(self) -> np.ndarray:
        return self.layout.encode(context(self._state, self._tables, self._ops), self._ops)


def _check_render_mode(mode: str | None, metadata: dict[str, Any]) -> str | None:
    if mode is not None and mode not in metadata["render_modes"]:
        raise ValueError(f"render_mode {mode!r} is not supported: use one of "
                         f"{', '.join(metadata['render_modes'])} or None.")
    return mode
