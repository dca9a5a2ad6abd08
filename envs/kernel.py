"""The boss-fight step kernel, shared by the single env and the vector env.

One call to :func:`step` resolves one exchange for every env: the boss commits to a move and
telegraphs it; the player reacts in time (or has learnt the boss's pattern and anticipates
it) and dodges, blocks, trades blows or gets hit; then the player uses the opening the move
leaves to attack or heal. Everything is written against :mod:`envs.backend`, so the same code
runs on numpy rows (vector env) and on Python scalars (single env).

Starting players and fights (:func:`start_players`, :func:`start_fights`) happen once per
fight, so they use numpy on the subset of envs that start, for both modes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import numpy as np

from envs.backend import Ops, ScalarOps
from envs.game import GameTables, PlayerRules
from envs.observation import ATTACK_PATTERNS, PLAYER_ACTIONS, ContextColumns
from envs.persona import PARAMETERS, PlayerPool

LIGHT, HEAVY, RANGED, DODGE, BLOCK, HEAL = range(len(PLAYER_ACTIONS))
AGGRESSIVE, DEFENSIVE, BALANCED, EVASIVE = range(4)
EMA = 0.1  # weight of the newest exchange in the player's running statistics
RECENT_FIGHTS = 5  # fights remembered in recent_deaths and the recent win rate
DEATH_BITS = int("01" * RECENT_FIGHTS, 2)
WIN_BITS = int("10" * RECENT_FIGHTS, 2)
APPROACH_SPEED = 6.0  # metres per second a player covers closing in to melee
BREAK_SECONDS = 15.0  # session time between two fights of a series
RANDOM_DRAWS = 7  # uniform numbers one exchange consumes per env


class FightConfig(NamedTuple):
    """What a fight is about: the boss's objective and the (optional) fixed conditions."""

    objective: str  # "defeat" or "engagement"
    difficulty: int  # index into the game's levels, -1 to draw one per fight
    arena: int  # index into the game's environments, -1 to draw one per fight
    fights_per_player: int  # fights in a series against one player before the next player


@dataclass
class FightState:
    """All mutable simulation state; per-env values are scalars (single) or arrays (vector)."""

    # the fight
    boss_hp: Any
    boss_max_hp: Any
    stamina: Any
    player_hp: Any
    distance: Any
    time: Any
    phase: Any
    last_move: Any
    heals_left: Any
    decisions: Any
    difficulty: Any
    arena: Any
    boss_damage_mult: Any
    visibility: Any
    dodge_mult: Any
    arena_size: Any
    # the player: persona parameters and what the game has observed of them so far
    persona: Any
    armor: Any
    power: Any
    share_total: Any
    dodge_rate: Any
    seen_reaction: Any
    session_seconds: Any
    fights: Any
    history: Any  # 2 bits per recent fight, newest lowest: bit 0 player died, bit 1 won
    # per-move tables, always numpy with one row per env
    ready_at: Any
    mask: Any
    shares: Any
    patterns: Any
    knowledge: Any
    knowledge_total: Any
    params: dict[str, Any]
    scalar: bool

    @classmethod
    def empty(cls, n: int, moves: int, scalar: bool) -> FightState:
        rows: dict[str, Any] = {
            f.name: _zero(n, scalar, f.name in INTEGER_FIELDS) for f in fields(cls)
            if f.name not in TABLES and f.name not in ("params", "scalar")
        }
        shapes = table_shapes(moves)
        tables = {name: _table(n, shape, scalar) for name, shape in shapes.items()}
        tables["mask"] = [True] * moves if scalar else np.ones((n, moves), dtype=bool)
        return cls(**rows, **tables, params={p: _zero(n, scalar, False) for p in PARAMETERS},
                   scalar=scalar)

    def take(self, index: np.ndarray) -> FightState:
        """The envs in ``index``, with only what ``context`` reads (vector state only)."""
        assert not self.scalar
        rows = {name: (value[index] if name in CONTEXT_FIELDS else None)
                for name, value in self.__dict__.items() if name not in ("params", "scalar")}
        params = {"equipment_level": self.params["equipment_level"][index]}
        return FightState(**rows, params=params, scalar=False)

    def clear(self, index: np.ndarray, *tables: str) -> None:
        """Zero the named per-move tables of the envs in ``index``."""
        for name in tables:
            if self.scalar:
                setattr(self, name, _table(1, np.shape(getattr(self, name)), True))
            else:
                getattr(self, name)[index] = 0.0

    def assign(self, index: np.ndarray, **values: Any) -> None:
        """Set per-env fields (or persona parameters) for the envs in ``index``."""
        for name, value in values.items():
            target = self.params if name in self.params else self.__dict__
            if self.scalar:
                target[name] = np.asarray(value).reshape(-1)[0].item()
            else:
                target[name][index] = value

    def get(self, name: str) -> Any:
        return self.params[name] if name in self.params else self.__dict__[name]


def _zero(n: int, scalar: bool, integer: bool) -> Any:
    if scalar:
        return 0 if integer else 0.0
    return np.zeros(n, dtype=int if integer else float)


def table_shapes(moves: int) -> dict[str, tuple[int, ...]]:
    return {"ready_at": (moves,), "shares": (len(PLAYER_ACTIONS),),
            "patterns": (len(ATTACK_PATTERNS),), "knowledge": (moves + 1, moves),
            "knowledge_total": (moves + 1,)}


def _table(n: int, shape: tuple[int, ...], scalar: bool) -> Any:
    if scalar:
        return np.zeros(shape).tolist()
    return np.zeros((n, *shape))


CONTEXT_FIELDS = ("share_total", "shares", "patterns", "dodge_rate", "seen_reaction", "player_hp",
                  "difficulty", "session_seconds", "history", "boss_hp", "boss_max_hp",
                  "phase", "arena", "distance", "stamina", "ready_at", "time", "last_move")
INTEGER_FIELDS = ("phase", "last_move", "decisions", "difficulty", "arena", "persona", "fights",
                  "history")
TABLES = ("ready_at", "mask", "shares", "patterns", "knowledge", "knowledge_total")


class StepResult(NamedTuple):
    """What one exchange produced: the RL signals plus what happened, for replays."""

    reward: Any
    terminated: Any
    truncated: Any
    player_won: Any
    hp_margin: Any
    move: Any
    anticipated: Any
    evaded: Any
    guarded: Any
    hit: Any
    trades: Any
    heals: Any
    attacks: Any
    ranged: Any
    taken: Any
    dealt: Any
    duration: Any


def start_players(s: FightState, index: np.ndarray, pool: PlayerPool,
                  rng: np.random.Generator) -> None:
    """New players (a new series) in the envs of ``index``: forget everything observed."""
    count = len(index)
    if count == 0:
        return
    persona, values = pool.sample(rng, count)
    params = {name: values[:, i] for i, name in enumerate(PARAMETERS)}
    params["equipment_level"] = np.round(params["equipment_level"])
    zeros = np.zeros(count)
    s.assign(index, persona=persona, armor=1.0 / (1.0 + 0.08 * params["equipment_level"]),
             power=1.0 + 0.1 * params["equipment_level"], share_total=zeros, dodge_rate=zeros,
             seen_reaction=np.full(count, 0.5), session_seconds=zeros, fights=zeros,
             history=zeros.astype(int), **params)
    s.clear(index, "shares", "patterns", "knowledge", "knowledge_total")


def start_fights(s: FightState, index: np.ndarray, t: GameTables, config: FightConfig,
                 rules: PlayerRules, rng: np.random.Generator) -> None:
    """New fights (same players) in the envs of ``index``."""
    count = len(index)
    if count == 0:
        return
    draws = rng.random((3, count))
    level = _fixed_or_drawn(config.difficulty, len(t.level_hp), draws[0])
    arena = _fixed_or_drawn(config.arena, len(t.arena_size), draws[1])
    boss_hp = t.boss_max_hp * np.asarray(t.level_hp)[level]
    size = np.asarray(t.arena_size)[arena]
    s.assign(index, boss_hp=boss_hp, boss_max_hp=boss_hp, stamina=np.full(count, t.max_stamina),
             player_hp=np.full(count, rules.max_hp),
             distance=np.minimum(3.0 + 5.0 * draws[2], size),
             time=np.zeros(count), phase=np.zeros(count, dtype=int),
             last_move=np.full(count, -1), heals_left=np.full(count, rules.heals),
             decisions=np.zeros(count, dtype=int), difficulty=level, arena=arena,
             boss_damage_mult=np.asarray(t.level_damage)[level] * np.asarray(t.arena_damage)[arena],
             visibility=np.asarray(t.arena_visibility)[arena],
             dodge_mult=np.asarray(t.arena_dodge)[arena], arena_size=size)
    s.clear(index, "ready_at")
    if s.scalar:
        s.mask[:] = fresh_mask(t)
    else:
        s.mask[index] = fresh_mask(t)


def _fixed_or_drawn(fixed: int, options: int, draw: np.ndarray) -> np.ndarray:
    if fixed >= 0:
        return np.full(len(draw), fixed)
    return np.minimum((draw * options).astype(int), options - 1)


# One pass, top to bottom, in sections: splitting it would add per-call overhead to the single
# env, whose whole step budget is about 25 microseconds.
def step(  # noqa: PLR0915
    s: FightState, move: Any, t: GameTables, rules: PlayerRules, config: FightConfig, o: Ops, u: Any
) -> StepResult:
    """Resolve one exchange in every env; ``u`` holds RANDOM_DRAWS uniforms per env."""
    p = s.params
    legal = o.pick(s.mask, move)
    move = o.where(legal, move, t.phase_fallback[s.phase])
    (windup, active, recovery, damage, reach, advance, dodgeability, blockable, guard,
     counter_damage, knockback, cooldown, stamina_cost) = o.lookup(t.move_stats, s.phase, move)
    damage = damage * s.boss_damage_mult
    distance = o.maximum(s.distance - advance, 0.0)
    attacking = (damage > 0.0) & (distance <= reach)

    # The player reads the telegraph in time, or has learnt the pattern and anticipates it.
    reaction = p["reaction_time"] * (1.0 + p["reaction_jitter"] * (2.0 * u[0] - 1.0))
    previous = s.last_move + 1
    familiarity = o.pick2(s.knowledge, previous, move) / (o.pick(s.knowledge_total, previous) + 2.0)
    anticipated = u[1] < familiarity
    reacted = (reaction < windup * s.visibility) | anticipated
    dodges = reacted & ((u[2] < p["dodge_frequency"]) | anticipated)
    blocks = reacted & o.not_(dodges) & (u[2] < p["dodge_frequency"] + p["block_frequency"])
    trades = reacted & o.not_(dodges | blocks) & (u[2] > 1.0 - p["risk_tolerance"])
    skill = o.where(anticipated, o.maximum(p["dodge_skill"], 0.9), p["dodge_skill"])
    evaded = dodges & (u[3] < skill * dodgeability * s.dodge_mult)
    hit = attacking & o.not_(evaded)
    guarded = hit & blocks & (blockable > 0.0)
    taken = hit * damage * (1.0 - guarded * rules.guard) * s.armor

    # The opening the move leaves: heal, or attack (closing in first for melee).
    heals = (s.player_hp - taken < p["heal_threshold"] * rules.max_hp) & (s.heals_left > 0)
    attacks = o.not_(heals) & (trades | (u[4] < p["aggression"]))
    ranged = attacks & (u[5] < p["ranged_ratio"])
    heavy = attacks & o.not_(ranged) & (u[6] < p["heavy_ratio"])
    # The player's opening: the move's recovery, plus its active time when it does not threaten
    # them (dodged, a guard, out of reach), plus the wind-up when they attack through it.
    opening = recovery + (evaded | o.not_(attacking)) * active + trades * windup
    approach = o.where(ranged, 0.0, o.maximum(distance - rules.melee_reach, 0.0) / APPROACH_SPEED)
    swings = o.clip((opening - approach) / rules.hit_seconds, 0.0, p["combo_length"])
    per_hit = o.where(ranged, rules.ranged_damage,
                      o.where(heavy, rules.heavy_damage, rules.light_damage))
    bonus = 1.0 + 0.3 * (anticipated | evaded)
    dealt = attacks * swings * per_hit * bonus * s.power * (1.0 - guard)
    countered = attacks * counter_damage * s.armor
    healed = heals * rules.heal_amount

    # Bookkeeping: positions, time, stamina, cooldowns, health, phase.
    after = o.where(attacks & o.not_(ranged), o.minimum(distance, rules.melee_reach), distance)
    after = after + hit * knockback
    s.distance = o.clip(after + 0.5 * (p["preferred_range"] - after), 0.0, s.arena_size)
    duration = windup + active + recovery
    s.time = s.time + duration
    s.session_seconds = s.session_seconds + duration
    o.put(s.ready_at, move, s.time + cooldown)
    s.stamina = o.minimum(s.stamina - stamina_cost + t.stamina_regen * duration,
                          t.max_stamina)
    s.heals_left = s.heals_left - heals
    s.boss_hp = s.boss_hp - dealt
    s.player_hp = o.minimum(s.player_hp - taken - countered + healed, rules.max_hp)
    boss_fraction = o.maximum(s.boss_hp, 0.0) / s.boss_max_hp
    player_fraction = o.maximum(s.player_hp, 0.0) / rules.max_hp
    s.phase = o.count_at_or_below(boss_fraction, t.phase_thresholds)
    s.decisions = s.decisions + 1

    # What a game observes of the player, and what the player learns of the boss.
    response = o.where(dodges, DODGE, o.where(blocks, BLOCK, -1))
    offense = o.where(heals, HEAL, o.where(ranged, RANGED, o.where(heavy, HEAVY, LIGHT)))
    responded = EMA * (response >= 0)
    acted = EMA * (heals | attacks)
    o.decay(s.shares, 1.0 - EMA)
    o.add(s.shares, response, responded)
    o.add(s.shares, offense, acted)
    s.share_total = s.share_total * (1.0 - EMA) + responded + acted
    s.dodge_rate = s.dodge_rate + EMA * attacking * (dodges - s.dodge_rate)
    s.seen_reaction = s.seen_reaction + EMA * attacking * (reaction - s.seen_reaction)
    # ATTACK_PATTERNS seen in this exchange, as bits: combo, hit_and_run, ranged_poke,
    # counter_attack, button_mash.
    seen = ((swings >= 2.0) + 2 * (p["preferred_range"] > rules.melee_reach + 0.5)
            + 4 * ranged + 8 * (evaded | guarded) + 16 * trades)
    o.blend(s.patterns, EMA * attacks, seen)
    o.add2(s.knowledge, previous, move, p["pattern_learning"])
    o.add(s.knowledge_total, previous, p["pattern_learning"])
    s.last_move = move

    boss_down = s.boss_hp <= 0.0
    player_down = (s.player_hp <= 0.0) & o.not_(boss_down)
    terminated = boss_down | player_down
    truncated = o.not_(terminated) & (s.time >= t.max_fight_seconds)
    margin = boss_fraction - player_fraction
    ended = terminated | truncated
    if config.objective == "defeat":
        reward = ((taken + countered) / rules.max_hp - 0.5 * dealt / s.boss_max_hp
                  + 1.0 * player_down - 1.0 * boss_down)
    else:
        reward = o.when(ended, lambda *a: engagement_reward(o, t, *a), s.difficulty, s.fights,
                        s.history, s.time, boss_down, margin)
    reward = reward - 0.05 * o.not_(legal)
    if o.any(ended):
        _record_series(s, o, ended, player_down, boss_down)
    update_mask(s, t, o)
    return StepResult(reward, terminated, truncated, boss_down, margin, move, anticipated, evaded,
                      guarded, hit, trades, heals, attacks, ranged, taken + countered, dealt,
                      duration)


def engagement_reward(o: Ops, t: GameTables, level: Any, fights: Any, history: Any,
                      seconds: Any, player_won: Any, margin: Any) -> Any:
    """At a fight's end: close margin + duration in band + steering the win rate to target.

    The steering term pays for the outcome that moves the player's recent win rate toward the
    level's target: a win when they have been winning too little, a loss when too much.
    """
    target, band, inverse_span, low, high, inverse_slack = o.gather(t.level_stats, level)
    played = o.minimum(fights, float(RECENT_FIGHTS))
    recent_wins = o.popcount(history & WIN_BITS) / o.maximum(played, 1.0)
    recent = o.where(played > 0, recent_wins, target)
    steer = (player_won - target) * (target - recent) * 4.0
    close = 1.0 - o.clip((o.abs(margin) - band) * inverse_span, 0.0, 1.0)
    # Duration: 1 inside [low, high], falling linearly to 0 half a band width outside.
    outside = o.maximum(low - seconds, 0.0) + o.maximum(seconds - high, 0.0)
    in_time = 1.0 - o.clip(outside * inverse_slack, 0.0, 1.0)
    return 0.5 * close + 0.5 * in_time + steer


def _record_series(s: FightState, o: Ops, ended: Any, player_down: Any, boss_down: Any) -> None:
    window = 4**RECENT_FIGHTS
    outcome = player_down + 2 * boss_down
    s.history = o.where(ended, (s.history * 4 + outcome) % window, s.history)
    s.fights = s.fights + ended
    s.session_seconds = s.session_seconds + ended * BREAK_SECONDS


def fresh_mask(t: GameTables) -> list[bool]:
    """Legal moves at a fight's start: first phase, full stamina, nothing on cooldown."""
    moves = len(t.phase_allows[0])
    mask = [True] * moves
    ScalarOps.legal_moves(mask, [0.0] * moves, 0.0, tuple(t.phase_allows[0]), t.max_stamina,
                          tuple(t.stamina_cost))
    return mask


def update_mask(s: FightState, t: GameTables, o: Ops) -> None:
    """Moves the boss may use now: allowed in the phase, off cooldown, affordable."""
    o.legal_moves(s.mask, s.ready_at, s.time, t.phase_allows[s.phase], s.stamina,
                  t.stamina_cost)


def context(s: FightState, t: GameTables, o: Ops) -> ContextColumns:
    """The player context a game would send now, plus the boss's own state, as numbers."""
    total = s.share_total + 1e-9
    shares = s.shares
    attack = (o.column_of(shares, LIGHT) + o.column_of(shares, HEAVY)
              + o.column_of(shares, RANGED)) / total
    dodge = o.column_of(shares, DODGE) / total
    defend = (o.column_of(shares, BLOCK) + o.column_of(shares, HEAL)) / total
    style = o.where(dodge > 0.35, EVASIVE, o.where(attack > 0.55, AGGRESSIVE,
                                                   o.where(defend > 0.35, DEFENSIVE, BALANCED)))
    return ContextColumns(
        frequent_actions=o.at_least(shares, 0.2 * total),
        dodge_frequency=s.dodge_rate,
        attack_patterns=o.at_least(s.patterns, 0.3),
        movement_style=style,
        reaction_time=s.seen_reaction,
        health_percentage=o.maximum(s.player_hp, 0.0) / t.player_max_hp,
        difficulty=s.difficulty,
        session_duration=s.session_seconds / 60.0,
        recent_deaths=o.popcount(s.history & DEATH_BITS),
        equipment_level=s.params["equipment_level"],
        boss_health=o.maximum(s.boss_hp, 0.0) / s.boss_max_hp,
        battle_phase=s.phase,
        environment=s.arena,
        distance=s.distance,
        boss_stamina=s.stamina / t.max_stamina_safe,
        cooldowns=o.remaining(s.ready_at, s.time, t.cooldown_safe),
        last_boss_action=s.last_move + 1,
    )
