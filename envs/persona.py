"""Synthetic players: parametric personas and populations of them.

A persona is a YAML file under ``configs/player/`` whose fields are :class:`Persona`'s. A
population (``members`` with weights, plus ``jitter``) draws a persona per player and jitters
each parameter, so training sees a spread of players rather than six fixed ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from envs.game import CONFIG_DIR
from envs.schema import DefinitionError, build, read_yaml, spec

PLAYER_DIR = CONFIG_DIR / "player"


@dataclass(frozen=True, kw_only=True)
class Persona:
    """How one kind of player fights. Every field is a knob designers turn."""

    name: str = spec("the persona's id")
    description: str = spec("who this player is, for people", "")
    reaction_time: float = spec("seconds from a telegraph's start to a reaction", 0.45,
                                low=0.05, high=2.0)
    reaction_jitter: float = spec("relative spread of the reaction time", 0.3, low=0, high=0.9)
    dodge_skill: float = spec("chance a dodge attempt avoids the hit", 0.6, low=0, high=1)
    dodge_frequency: float = spec("chance of dodging a telegraph the player reacted to", 0.4,
                                  low=0, high=1)
    block_frequency: float = spec("chance of blocking a telegraph the player reacted to", 0.2,
                                  low=0, high=1)
    aggression: float = spec("chance of attacking when the boss is open", 0.6, low=0, high=1)
    risk_tolerance: float = spec("chance of attacking through a telegraph instead of waiting",
                                 0.2, low=0, high=1)
    preferred_range: float = spec("metres the player tries to keep from the boss", 2.0, low=0)
    heavy_ratio: float = spec("share of melee attacks that are heavy", 0.3, low=0, high=1)
    ranged_ratio: float = spec("share of attacks made at range", 0.1, low=0, high=1)
    combo_length: float = spec("most attacks chained in one opening", 2.0, low=1, high=8)
    heal_threshold: float = spec("HP fraction under which the player heals when it can", 0.35,
                                 low=0, high=1)
    equipment_level: int = spec("gear level: raises damage dealt, lowers damage taken", 1,
                                low=0, high=10)
    pattern_learning: float = spec("how fast the player learns the boss's move patterns and "
                                   "starts countering them (0: never)", 0.0, low=0, high=1)


PARAMETERS = tuple(f.name for f in fields(Persona) if f.name not in ("name", "description"))
"""The numeric persona parameters, in the order the simulator stores them."""


@dataclass(frozen=True, kw_only=True)
class Population:
    """A weighted mix of personas, with per-player randomization of their parameters."""

    name: str = spec("the population's id")
    members: dict[str, float] = spec("persona names and their relative weights")
    jitter: float = spec("relative random spread applied to each parameter per player", 0.0,
                         low=0, high=0.5)
    description: str = spec("what the mix represents", "")


@dataclass(frozen=True, kw_only=True)
class PlayerPool:
    """Personas resolved to arrays, ready for sampling players inside the simulator."""

    names: tuple[str, ...]
    weights: np.ndarray
    parameters: np.ndarray
    jitter: float

    def sample(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``count`` players: (persona index, parameter rows) with jitter applied."""
        index = np.searchsorted(np.cumsum(self.weights), rng.random(count), side="right")
        index = np.minimum(index, len(self.names) - 1)
        noise = 1.0 + self.jitter * (2.0 * rng.random((count, len(PARAMETERS))) - 1.0)
        return index, _clip_parameters(self.parameters[index] * noise)


def _bounds(key: str, default: float) -> np.ndarray:
    meta = {f.name: f.metadata for f in fields(Persona)}
    return np.array([default if meta[p].get(key) is None else meta[p][key] for p in PARAMETERS],
                    dtype=float)


LOWEST, HIGHEST = _bounds("min", 0.0), _bounds("max", np.inf)


def _clip_parameters(values: np.ndarray) -> np.ndarray:
    return np.clip(values, LOWEST, HIGHEST)


def load_persona(player: str | Path | Mapping[str, Any] | Persona) -> Persona:
    """Load one persona by name (``configs/player/<name>.yaml``), path, mapping or object."""
    if isinstance(player, Persona):
        return player
    if isinstance(player, Mapping):
        return build(Persona, dict(player), "persona")
    path = _player_path(player)
    return build(Persona, read_yaml(path), str(path))


def load_players(player: str | Path | Mapping[str, Any] | Persona | Population) -> PlayerPool:
    """Resolve a persona or a population (by name, path, mapping or object) to a pool."""
    if isinstance(player, Persona):
        return _pool([player], [1.0], 0.0)
    if isinstance(player, Population):
        return _population_pool(player, "population")
    if isinstance(player, Mapping):
        data, source = dict(player), "player"
    else:
        path = _player_path(player)
        data, source = read_yaml(path), str(path)
    if "members" in data:
        return _population_pool(build(Population, data, source), source)
    return _pool([build(Persona, data, source)], [1.0], 0.0)


def _population_pool(population: Population, source: str) -> PlayerPool:
    if not population.members:
        raise DefinitionError(f"{source}: 'members' is empty: list at least one persona.")
    for member, weight in population.members.items():
        if not weight > 0:  # also rejects NaN
            raise DefinitionError(f"{source}: members.{member} has weight {weight}: use > 0.")
    personas = [_member(source, m) for m in population.members]
    return _pool(personas, list(population.members.values()), population.jitter)


def _member(source: str, name: str) -> Persona:
    try:
        return load_persona(name)
    except DefinitionError as exc:
        raise DefinitionError(f"{source}: members.{name} is not a usable persona: {exc}") from exc


def _pool(personas: list[Persona], weights: list[float], jitter: float) -> PlayerPool:
    values = np.array([[float(asdict(p)[k]) for k in PARAMETERS] for p in personas])
    total = float(sum(weights))
    return PlayerPool(
        names=tuple(p.name for p in personas),
        weights=np.array([w / total for w in weights]),
        parameters=values,
        jitter=jitter,
    )


def available_players() -> list[str]:
    return sorted(p.stem for p in PLAYER_DIR.glob("*.yaml"))


def available_personas() -> list[str]:
    """Persona files only (populations left out)."""
    return [n for n in available_players() if "members" not in read_yaml(PLAYER_DIR / f"{n}.yaml")]


def _player_path(player: str | Path) -> Path:
    path = Path(player)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise DefinitionError(f"{path}: no such persona file.")
        return path
    named = PLAYER_DIR / f"{player}.yaml"
    if not named.is_file():
        raise DefinitionError(
            f"unknown player {str(player)!r}. Personas and populations available: "
            f"{', '.join(available_players())} (files in {PLAYER_DIR}), or pass a YAML path."
        )
    return named
