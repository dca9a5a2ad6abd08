"""The LLM boss's prompt: a decision's situation, the game's vocabulary and the retrieved
encounters as chat messages, and the lenient parsing of the answer (agents.llm_boss uses them).

The prompt is built from an encoded observation row (the simulator's, or a served request's
after ``ObservationLayout.encode_situation``), so a decision reads the same whatever asked it.
Numbers are rounded (percentages, 0.1 m, 0.01 s) so nearby situations share a cache entry.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import NamedTuple, TypeAlias

import numpy as np

from envs.fights import observed_player
from envs.game import GameDefinition, Move
from envs.observation import VALUE_SCALES, BossState, ObservationLayout, Situation
from rag.retrieval import Neighbours

Message: TypeAlias = dict[str, str]
"""One chat message: ``{"role": "system" | "user", "content": ...}``."""

DEFAULT_GOAL = (
    "Give the player a fight that is hard but fair: read what they do and counter it, punish "
    "their habits, and keep the fight close to the difficulty level's targets."
)


# ---------------------------------------------------------------------------- reading a row


class Encounter(NamedTuple):
    """One retrieved past decision, as the prompt shows it."""

    move: str
    """The boss move taken then."""
    value: float
    """The return that followed it."""
    outcome: float
    """1 the boss won that fight, 0 the player won, 0.5 timeout."""
    distance: float
    """Squared L2 distance of its key to the current one (0: the same situation)."""


def encounters_from(neighbours: Neighbours,
                    moves: Sequence[str]) -> list[tuple[Encounter, ...]]:
    """Per query row, its valid neighbours (padding dropped) as Encounters, nearest first."""
    rows = []
    for ids, dists, picked, values, outcomes in zip(
            neighbours.ids, neighbours.distances, neighbours.moves, neighbours.values,
            neighbours.outcomes, strict=True):
        rows.append(tuple(
            Encounter(moves[int(m)], float(v), float(o), float(d))
            for i, d, m, v, o in zip(ids, dists, picked, values, outcomes, strict=True)
            if i >= 0 and 0 <= m < len(moves)))
    return rows


def situation_from_observation(layout: ObservationLayout,
                               observation: np.ndarray) -> Situation:
    """The Situation one observation row encodes, in protocol units (the encoder inverted).

    Counts come back rounded (recent deaths, equipment level); a category that is all zeros
    (an unknown arena or difficulty) comes back as None.
    """
    row = np.asarray(observation, dtype=np.float64).reshape(-1)
    if row.shape != (layout.size,):
        raise ValueError(f"expected one observation row of width {layout.size} (this game's "
                         f"ObservationLayout), got shape {np.shape(observation)}.")
    part = {f.name: row[f.start:f.start + f.size] for f in layout.features}
    difficulty = _category(part["difficulty"], layout.difficulty_levels)
    player = observed_player(layout, row)
    if difficulty is not None:
        player = replace(player, difficulty_preference=difficulty)
    last = _category(part["last_boss_action"], ("none", *layout.moves))
    return Situation(
        player=player,
        boss_health_percentage=_value(part, "boss_health"),
        battle_phase=layout.phases[int(part["battle_phase"].argmax())],
        environment=_category(part["environment"], layout.environments),
        distance=_value(part, "distance"),
        difficulty=difficulty,
        boss=BossState(stamina=_value(part, "boss_stamina"),
                       cooldowns=tuple(float(c) for c in part["cooldowns"]),
                       last_action=None if last in (None, "none") else last,
                       habits=tuple(float(h) for h in part.get("move_habits", ()))),
    )


def _value(part: Mapping[str, np.ndarray], name: str) -> float:
    return float(part[name][0]) / VALUE_SCALES[name]


def _category(one_hot: np.ndarray, names: Sequence[str]) -> str | None:
    if not len(one_hot) or one_hot.max() < 0.5:
        return None
    return names[int(one_hot.argmax())]


# ---------------------------------------------------------------------------- the prompt


ANSWER_FORMAT = ('Answer with one JSON object and nothing else: {"move": "<one of the legal '
                 'moves>", "reason": "<one short sentence>"}.')


def system_prompt(game: GameDefinition, goal: str = DEFAULT_GOAL) -> str:
    """The game's vocabulary and the task: the same for every decision of a game."""
    boss = game.boss
    lines = [
        f'You decide the moves of {boss.name}, the boss of the game "{game.name}": '
        f"{game.description.strip()}",
        f"Each time the boss can act, you choose its next move. {goal.strip()}",
        "",
        "Boss moves (telegraph: the wind-up the player sees before the move hits):",
        *(f"- {name}: {_move_facts(move, game.tick_rate)}" for name, move in game.moves.items()),
        "",
        "Phases (the boss's HP decides the phase; each phase allows some moves):",
        *(f"- {p.name}: from {p.starts_below:.0%} boss HP down; moves {', '.join(p.moves)}"
          f"{_multipliers(p.damage_multiplier, p.speed_multiplier)}" for p in game.phases),
        "",
        "Arenas:",
        *(f"- {name}: {a.size:g} m of room, telegraph visibility x{a.visibility:g}, player "
          f"dodge success x{a.dodge_multiplier:g}, boss damage x{a.boss_damage_multiplier:g}"
          for name, a in game.environments.items()),
        "",
        "Difficulty levels (the designer's targets for a fight):",
        *(f"- {name}: boss damage x{d.boss_damage:g}, boss HP x{d.boss_hp:g}; the player "
          f"should win {d.target_player_win_rate:.0%} +- {d.win_rate_tolerance:.0%} of fights, "
          f"lasting {d.target_duration[0]:g}-{d.target_duration[1]:g} s, ending with HP "
          f"within {d.target_hp_margin:.0%} of each other"
          for name, d in game.difficulty_levels.items()),
        "",
        f"The boss has {boss.max_hp:g} HP and {boss.max_stamina:g} stamina (regains "
        f"{boss.stamina_regen:g} per second); the player has {game.player.max_hp:g} HP and "
        f"{game.player.heals} heals. A move on cooldown or costing more stamina than the boss "
        f"has is not legal.",
        "",
        ANSWER_FORMAT,
    ]
    return "\n".join(lines)


def _move_facts(move: Move, tick_rate: int) -> str:
    facts = [move.action_type]
    facts.append(f"damage {move.damage:g}, reach {move.reach:g} m" if move.damage > 0
                 else "no damage")
    facts.append(f"telegraph {move.windup_ticks / tick_rate:.2f} s, active "
                 f"{move.active_ticks / tick_rate:.2f} s, recovery "
                 f"{move.recovery_ticks / tick_rate:.2f} s")
    facts.append(f"cooldown {move.cooldown:g} s" if move.cooldown else "no cooldown")
    facts.append(f"stamina {move.stamina_cost:g}" if move.stamina_cost else "no stamina cost")
    optional = [
        (move.damage > 0 and move.dodgeability != 1.0,
         f"dodge success x{move.dodgeability:g}"),
        (move.damage > 0 and not move.blockable, "unblockable"),
        (move.guard > 0, f"ignores {move.guard:.0%} of the player's damage"),
        (move.counter_damage > 0, f"deals {move.counter_damage:g} to a player attacking into it"),
        (move.advance > 0, f"closes {move.advance:g} m"),
        (move.knockback > 0, f"knocks back {move.knockback:g} m"),
    ]
    return ", ".join(facts + [text for wanted, text in optional if wanted])


def _multipliers(damage: float, speed: float) -> str:
    parts = [f"damage x{damage:g}" if damage != 1.0 else "",
             f"wind-up and recovery x{speed:g}" if speed != 1.0 else ""]
    text = ", ".join(p for p in parts if p)
    return f"; {text}" if text else ""


def user_prompt(game: GameDefinition, situation: Situation, legal_moves: Sequence[str],
                encounters: Sequence[Encounter] | None = None) -> str:
    """The player, the fight, the legal moves and the retrieved encounters (None: no memory)."""
    p, boss = situation.player, situation.boss
    cooldowns = boss.cooldowns or (0.0,) * len(game.moves)  # none given: all ready
    cooling = [f"{name} ({fraction * move.cooldown:.1f} s left)" for (name, move), fraction
               in zip(game.moves.items(), cooldowns, strict=True) if fraction > 0]
    lines = [
        "Player:",
        f"- movement style: {p.movement_style}",
        f"- frequent actions: {', '.join(p.frequent_actions) or 'none'}",
        f"- attack patterns: {', '.join(p.attack_patterns) or 'none'}",
        f"- dodges {p.dodge_frequency:.0%} of the boss's attacks",
        f"- reaction time: {p.reaction_time:.2f} s",
        f"- health: {p.health_percentage:.0%}",
        f"- deaths in the last 5 fights: {p.recent_deaths}",
        f"- equipment level: {p.equipment_level} of 10",
        f"- playing for {p.session_duration:.0f} min",
        "Fight:",
        f"- difficulty: {situation.difficulty or 'unknown'}",
        f"- battle phase: {situation.battle_phase}",
        f"- arena: {situation.environment or 'unknown'}",
        f"- boss health: {situation.boss_health_percentage:.0%}, stamina: {boss.stamina:.0%}",
        f"- distance to the player: {situation.distance:.1f} m",
        f"- the boss's last move: {boss.last_action or 'none yet'}",
        f"- on cooldown: {', '.join(cooling) or 'nothing'}",
        *_habit_lines(game, boss),
        f"Legal moves now: {', '.join(legal_moves)}",
    ]
    if encounters is not None:
        lines += _encounter_lines(encounters)
    lines.append(f'Answer with JSON only: {{"move": "{" | ".join(legal_moves)}", '
                 f'"reason": "..."}}')
    return "\n".join(lines)


def _habit_lines(game: GameDefinition, boss: BossState) -> list[str]:
    """How predictable the boss has been after its last move (``move_habits``), if known."""
    if boss.last_action is None or not any(h > 0 for h in boss.habits):
        return []
    shares = ", ".join(f"{name} {habit:.0%}" for name, habit
                       in zip(game.moves, boss.habits, strict=True) if habit > 0)
    return [f"- how often the boss followed {boss.last_action} with each move against this "
            f"player: {shares}"]


def _encounter_lines(encounters: Sequence[Encounter]) -> list[str]:
    if not encounters:
        return ["Similar past encounters: none recorded yet."]
    lines = ["Similar past encounters (nearest first; return: what followed for the boss):"]
    lines += [f"{i}. {e.move}: return {e.value:+.2f}, {_outcome(e.outcome)} (distance "
              f"{e.distance:.3f})" for i, e in enumerate(encounters, 1)]
    by_move: dict[str, list[float]] = {}
    for e in encounters:
        by_move.setdefault(e.move, []).append(e.value)
    lines.append("Mean return by move: " + "; ".join(
        f"{move} {float(np.mean(values)):+.2f} ({len(values)}x)"
        for move, values in by_move.items()))
    return lines


def _outcome(outcome: float) -> str:
    for value, words in ((1.0, "the boss won"), (0.0, "the player won"), (0.5, "timeout")):
        if math.isclose(outcome, value, abs_tol=1e-6):
            return words
    return f"outcome {outcome:.2f} (1: boss won, 0: player won)"


def build_prompt(game: GameDefinition, observation: np.ndarray, legal: np.ndarray,
                 encounters: Sequence[Encounter] | None = None, goal: str = DEFAULT_GOAL,
                 layout: ObservationLayout | None = None) -> list[Message]:
    """The chat messages of one decision: one observation row, its (moves,) legal mask, and
    the retrieved encounters (None: no memory, the section is left out)."""
    layout = layout or ObservationLayout.for_game(game)
    mask = np.asarray(legal, dtype=bool).reshape(-1)
    if mask.shape != (len(game.moves),) or not mask.any():
        raise ValueError(f"legal must be a (moves,) bool mask with a legal move; this game has "
                         f"{len(game.moves)} moves, got {np.asarray(legal).tolist()}.")
    legal_moves = [name for name, ok in zip(game.moves, mask, strict=True) if ok]
    situation = situation_from_observation(layout, observation)
    return [{"role": "system", "content": system_prompt(game, goal)},
            {"role": "user", "content": user_prompt(game, situation, legal_moves, encounters)}]


# ---------------------------------------------------------------------------- the answer


_MOVE_FIELD = re.compile(r'"(?:move|boss_action)"\s*:\s*"([^"]+)"')
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


def parse_move(answer: str | None, moves: Sequence[str]) -> str | None:
    """The move an answer names (a vocabulary name when it matches one), or None.

    Lenient about the form (see the module docstring), so the caller validates the result
    against the vocabulary and the legal moves.
    """
    if not answer or not answer.strip():
        return None
    text = _FENCE.sub("", answer.strip())
    named = _json_move(text)
    if named is None:
        match = _MOVE_FIELD.search(text)  # e.g. JSON cut off by max_tokens after the move
        named = match.group(1) if match else None
    if named is not None:
        return _canonical(named, moves) or named.strip() or None
    bare = text.strip().strip("`'\".!").strip()
    # Bare text names a move only when it is one: a sentence is not an answer.
    return _canonical(bare, moves) or (bare if re.fullmatch(r"[\w\-]+", bare) else None)


def _json_move(text: str) -> str | None:
    for candidate in (text, text[text.find("{"):text.rfind("}") + 1]):
        try:
            value = json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            named = value.get("move", value.get("boss_action"))
            return named if isinstance(named, str) else None
    return None


def _canonical(name: str, moves: Sequence[str]) -> str | None:
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    return next((m for m in moves if m.lower() == key), None)


