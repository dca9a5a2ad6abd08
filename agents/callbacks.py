"""Stable-Baselines3 callbacks of a training run: fight metrics, progress, checkpoints.

None of them knows where things go: metrics are handed to a ``log(metrics, step)`` function and
checkpoints to a ``save(model, step)`` function that the caller passes in (the training entry
point sends both to MLflow). Steps are env steps (``model.num_timesteps``), which keep counting
when a run is resumed.

- :class:`FightMetricsCallback`: over the last ``window`` fights, the episode return, player win
  rate, fight duration, timeout rate and engagement score (:mod:`envs.engagement`, against each
  fight's difficulty level), plus env steps per second, every ``every`` env steps and when
  training ends.
- :class:`LoggerForwarder`: SB3's own logger output (losses, entropy, ``ep_rew_mean``...) to
  ``log``, at most once per ``every`` env steps.
- :class:`ProgressBarCallback`: a tqdm bar with steps/s and ETA (disabled when nobody watches).
- :class:`CheckpointCallback`: ``save(model, step)`` every ``every`` env steps.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter
from tqdm import tqdm

from envs.engagement import summarize_fights
from envs.fights import FightResult
from envs.game import GameDefinition
from envs.observation import PlayerContext

LogFn = Callable[[dict[str, float], int], None]
"""Receives metrics (name -> value) at an env step."""
SaveFn = Callable[[BaseAlgorithm, int], None]
"""Receives the model to checkpoint at an env step."""


class StepTrigger:
    """True once each time the step count crosses a multiple of ``every`` (resume-safe)."""

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1 env step, got {every}.")
        self.every = every
        self.next = every

    def start(self, step: int) -> None:
        self.next = (step // self.every + 1) * self.every

    def __call__(self, step: int) -> bool:
        if step < self.next:
            return False
        self.start(step)
        return True


class FightMetricsCallback(BaseCallback):
    """Metrics of the fights that ended recently, logged every ``every`` env steps.

    Reads the fight info the env puts in ``infos`` when a fight ends (``episode``,
    ``player_won``, ``fight_seconds``, ``hp_margin``, ``persona``, ``difficulty``,
    ``environment``, ``TimeLimit.truncated``) and counts the moves the agent chose per env.
    """

    def __init__(self, log: LogFn, every: int, window: int = 200) -> None:
        super().__init__()
        self.log = log
        self.trigger = StepTrigger(every)
        self.fights: deque[FightResult] = deque(maxlen=window)
        self.returns: deque[float] = deque(maxlen=window)
        self.fights_seen = 0
        self._moves = np.zeros((0, 0), dtype=np.int64)
        self._clock = (0.0, 0)
        self._logged_at = 0

    def _on_training_start(self) -> None:
        setup = self.training_env.get_attr("setup")[0]
        self.game: GameDefinition = setup.game
        self.personas: tuple[str, ...] = tuple(setup.pool.names)
        self.arenas: tuple[str, ...] = tuple(setup.layout.environments)
        self._moves = np.zeros((self.training_env.num_envs, len(self.game.moves)), dtype=np.int64)
        self.trigger.start(self.num_timesteps)
        self._clock = (time.perf_counter(), self.num_timesteps)
        self._logged_at = self.num_timesteps

    def _on_step(self) -> bool:
        actions = np.asarray(self.locals["actions"]).reshape(-1)
        self._moves[np.arange(len(actions)), actions] += 1
        for i, info in enumerate(self.locals["infos"]):
            if "episode" in info:
                self._record(i, info)
        if self.trigger(self.num_timesteps):
            self._log()
        return True

    def _on_training_end(self) -> None:
        # The last steps since the previous log (short runs may have no other log at all).
        if self.num_timesteps > self._logged_at:
            self._log()

    def _log(self) -> None:
        self.log(self.metrics(), self.num_timesteps)
        self._logged_at = self.num_timesteps

    def _record(self, env: int, info: dict[str, Any]) -> None:
        self.fights.append(FightResult(
            persona=self.personas[int(info["persona"])],
            difficulty=list(self.game.difficulty_levels)[int(info["difficulty"])],
            environment=self.arenas[int(info["environment"])],
            player_won=bool(info["player_won"]),
            timed_out=bool(info.get("TimeLimit.truncated", False)),
            fight_seconds=float(info["fight_seconds"]), hp_margin=float(info["hp_margin"]),
            moves_used=tuple(int(n) for n in self._moves[env]), observed=PlayerContext()))
        self.returns.append(float(info["episode"]["r"]))
        self.fights_seen += 1
        self._moves[env] = 0

    def metrics(self) -> dict[str, float]:
        """The current metrics: speed always, fight statistics once a fight has ended."""
        now, steps = time.perf_counter(), self.num_timesteps
        started, start_steps = self._clock
        self._clock = (now, steps)
        metrics = {"time/env_steps_per_second": (steps - start_steps) / max(now - started, 1e-9),
                   "fights/total": float(self.fights_seen)}
        if self.fights:
            metrics.update(fight_metrics(list(self.fights), self.game))
            metrics["fights/episode_return"] = float(np.mean(self.returns))
        return metrics


def fight_metrics(fights: list[FightResult], game: GameDefinition) -> dict[str, float]:
    """Win rate, duration, timeouts and engagement of ``fights``, each against its own level.

    With fights at several difficulty levels, the engagement score is the fight-weighted mean
    of the per-level scores.
    """
    by_level: dict[str, list[FightResult]] = {}
    for fight in fights:
        by_level.setdefault(fight.difficulty, []).append(fight)
    engagement = sum(
        len(group) * summarize_fights(group, game.difficulty_levels[level],
                                      game.move_names).engagement_score
        for level, group in by_level.items()) / len(fights)
    return {
        "fights/player_win_rate": float(np.mean([f.player_won for f in fights])),
        "fights/duration_seconds": float(np.mean([f.fight_seconds for f in fights])),
        "fights/timeout_rate": float(np.mean([f.timed_out for f in fights])),
        "fights/engagement_score": float(engagement),
    }


class LoggerForwarder(KVWriter):
    """An SB3 logger output that hands numeric values to ``log``, at most once per ``every``."""

    def __init__(self, log: LogFn, every: int) -> None:
        self.log = log
        self.trigger = StepTrigger(every)
        self.trigger.next = 0

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any],
              step: int = 0) -> None:
        if not self.trigger(step):
            return
        numbers = {key: float(value) for key, value in key_values.items()
                   if isinstance(value, int | float | np.number) and not isinstance(value, bool)}
        if numbers:
            self.log(numbers, step)

    def close(self) -> None:
        """Nothing to release."""


class ProgressBarCallback(BaseCallback):
    """A tqdm bar over the env steps: steps/s and ETA. Pass ``enabled=False`` to stay quiet."""

    def __init__(self, total_timesteps: int, enabled: bool) -> None:
        super().__init__()
        self.total = total_timesteps
        self.enabled = enabled
        self.bar: tqdm[Any] | None = None

    def _on_training_start(self) -> None:
        self.bar = tqdm(total=self.total, initial=self.num_timesteps, unit=" steps",
                        unit_scale=True, dynamic_ncols=True, disable=not self.enabled,
                        desc="training")

    def _on_step(self) -> bool:
        if self.bar is not None:
            self.bar.update(self.num_timesteps - self.bar.n)
        return True

    def _on_training_end(self) -> None:
        self.close()

    def close(self) -> None:
        """Close the bar (also after an interruption, when SB3 skips _on_training_end)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class CheckpointCallback(BaseCallback):
    """Calls ``save(model, step)`` each time the env steps cross a multiple of ``every``."""

    def __init__(self, save: SaveFn, every: int) -> None:
        super().__init__()
        self.save = save
        self.trigger = StepTrigger(every)

    def _on_training_start(self) -> None:
        self.trigger.start(self.num_timesteps)

    def _on_step(self) -> bool:
        if self.trigger(self.num_timesteps):
            self.save(self.model, self.num_timesteps)
        return True


def close_all(callbacks: Iterable[BaseCallback]) -> None:
    """Release what callbacks hold (progress bars) whether or not training ended normally."""
    for callback in callbacks:
        close = getattr(callback, "close", None)
        if callable(close):
            close()
