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

from envs.backend import BatchOps, Ops, ScalarOps
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
RANDOM_DRAWS = 6  # uniform numbers one exchange consumes per env


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
    # the player: what the game has observed of them so far (their parameters: ``params``)
    persona: Any
    range_keeper: Any
    share_total: Any
    dodge_rate: Any
    seen_reaction: Any
    session_seconds: Any
    fights: Any
    history: Any  # 2 bits per recent fight, newest lowest: bit 0 player died, bit 1 won
    # per-move tables, always numpy with one row per env
    ready_at: Any
    shares: Any
    patterns: Any
    knowledge: Any
    knowledge_total: Any
    habits: Any  # the boss's own move counts after each previous move, against this player
    habits_total: Any
    # PLAYER_FIELDS by name: floats (single env), or row views of ``player`` (vector env),
    # a (fields, envs) matrix so that a new player is one assignment.
    params: dict[str, Any]
    player: np.ndarray | None
    scalar: bool

    @classmethod
    def empty(cls, n: int, moves: int, scalar: bool) -> FightState:
        rows: dict[str, Any] = {
            f.name: _zero(n, scalar, f.name in INTEGER_FIELDS) for f in fields(cls)
            if f.name not in TABLES and f.name not in NOT_ROWS
        }
        shapes = table_shapes(moves)
        tables = {name: _table(n, shape, scalar) for name, shape in shapes.items()}
        player = None if scalar else np.zeros((len(PLAYER_FIELDS), n))
        state = cls(**rows, **tables, params={}, player=player, scalar=scalar)
        state.__setstate__(state.__dict__)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Pickling copies each array, so the row views are made again from the matrix.
        self.__dict__.update(state)
        if self.player is not None:
            self.params = dict(zip(PLAYER_FIELDS, self.player, strict=True))
        elif not self.params:
            self.params = dict.fromkeys(PLAYER_FIELDS, 0.0)

    def assign_player(self, index: np.ndarray, values: np.ndarray) -> None:
        """Set PLAYER_FIELDS (the columns of ``values``, one row per env in ``index``)."""
        if self.player is None:
            self.params.update(zip(PLAYER_FIELDS, values[0].tolist(), strict=True))
        else:
            self.player[:, index] = values.T

    def take(self, index: np.ndarray) -> FightState:
        """The envs in ``index``, with only what ``context`` reads (vector state only)."""
        assert not self.scalar
        rows = {name: (value[index] if name in CONTEXT_FIELDS else None)
                for name, value in self.__dict__.items() if name not in NOT_ROWS}
        params = {"equipment_level": self.params["equipment_level"][index]}
        return FightState(**rows, params=params, player=None, scalar=False)

    def clear(self, index: np.ndarray, *tables: str) -> None:
        """Zero the named per-move tables of the envs in ``index``."""
        for name in tables:
            if self.scalar:
                setattr(self, name, _table(1, np.shape(getattr(self, name)), True))
            else:
                getattr(self, name)[index] = 0.0

    def assign(self, index: np.ndarray, **values: Any) -> None:
        """Set per-env fields for the envs in ``index``."""
        for name, value in values.items():
            if not self.scalar:
                self.__dict__[name][index] = value
            elif isinstance(value, np.ndarray):
                self.__dict__[name] = value.item()
            else:
                self.__dict__[name] = value


def _zero(n: int, scalar: bool, integer: bool) -> Any:
    if scalar:
        return 0 if integer else 0.0
    return np.zeros(n, dtype=int if integer else float)


def table_shapes(moves: int) -> dict[str, tuple[int, ...]]:
    return {"ready_at": (moves,), "shares": (len(PLAYER_ACTIONS),),
            "patterns": (len(ATTACK_PATTERNS),), "knowledge": (moves + 1, moves),
            "knowledge_total": (moves + 1,), "habits": (moves + 1, moves),
            "habits_total": (moves + 1,)}


def _table(n: int, shape: tuple[int, ...], scalar: bool) -> Any:
    if scalar:
        return np.zeros(shape).tolist()
    return np.zeros((n, *shape))


PLAYER_FIELDS = (*PARAMETERS, "armor", "power", "fastest_reaction", "reaction_spread",
                 "anticipating_skill", "heal_below", "dodge_or_block", "trade_above", "heavy_cut")
"""Per-player floats: the persona's parameters, then constants derived from them once."""
NOT_ROWS = ("params", "player", "scalar")
CONTEXT_FIELDS = ("share_total", "shares", "patterns", "dodge_rate", "seen_reaction", "player_hp",
                  "difficulty", "session_seconds", "history", "boss_hp", "boss_max_hp",
                  "phase", "arena", "distance", "stamina", "ready_at", "time", "last_move",
                  "habits", "habits_total")
INTEGER_FIELDS = ("phase", "last_move", "decisions", "difficulty", "arena", "persona", "fights",
                  "range_keeper",
                  "history")
TABLES = ("ready_at", "shares", "patterns", "knowledge", "knowledge_total", "habits",
          "habits_total")


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


def start_players(s: FightState, index: np.ndarray, pool: PlayerPool, rules: PlayerRules,
                  rng: np.random.Generator) -> None:
    """New players (a new series) in the envs of ``index``: forget everything observed."""
    count = len(index)
    if count == 0:
        return
    draw_players(s, index, pool, rules, rng)
    zeros = np.zeros(count)
    s.assign(index, share_total=zeros, dodge_rate=zeros, seen_reaction=np.full(count, 0.5),
             session_seconds=zeros, fights=zeros, history=zeros.astype(int))
    s.clear(index, "shares", "patterns", "knowledge", "knowledge_total", "habits",
            "habits_total")


def draw_players(s: FightState, index: np.ndarray, pool: PlayerPool, rules: PlayerRules,
                 rng: np.random.Generator, persona_offset: int = 0) -> None:
    """Give the players of ``index`` parameters drawn from ``pool`` and nothing else: what the
    game observed of them and what they learnt of the boss stay (a player changing style).
    Their persona index is ``persona_offset`` plus the index in ``pool``."""
    count = len(index)
    if count == 0:
        return
    persona, values = pool.sample(rng, count)
    player = np.empty((count, len(PLAYER_FIELDS)))
    player[:, :len(PARAMETERS)] = values
    params = dict(zip(PLAYER_FIELDS, player.T, strict=True))
    params["equipment_level"][:] = np.round(params["equipment_level"])
    for name, derived in _derived(params, rules).items():
        params[name][:] = derived
    s.assign_player(index, player)
    s.assign(index, persona=persona + persona_offset,
             range_keeper=2 * (params["preferred_range"] > rules.melee_reach + 0.5))


def _derived(params: dict[str, np.ndarray], rules: PlayerRules) -> dict[str, np.ndarray]:
    """Per-player constants the kernel would otherwise recompute every exchange."""
    reaction, jitter = params["reaction_time"], params["reaction_jitter"]
    ranged = params["ranged_ratio"]
    return {
        "armor": 1.0 / (1.0 + 0.08 * params["equipment_level"]),
        "power": 1.0 + 0.1 * params["equipment_level"],
        "fastest_reaction": reaction * (1.0 - jitter),
        "reaction_spread": 2.0 * reaction * jitter,
        "anticipating_skill": np.maximum(params["dodge_skill"], 0.9),
        "heal_below": params["heal_threshold"] * rules.max_hp,
        "dodge_or_block": params["dodge_frequency"] + params["block_frequency"],
        "trade_above": 1.0 - params["risk_tolerance"],
        # One draw picks ranged (below ranged_ratio) or else heavy with heavy_ratio's odds.
        "heavy_cut": ranged + (1.0 - ranged) * params["heavy_ratio"],
    }


def start_fights(s: FightState, index: np.ndarray, t: GameTables, config: FightConfig,
                 rules: PlayerRules, rng: np.random.Generator) -> None:
    """New fights (same players) in the envs of ``index``."""
    if len(index) == 0:
        return
    o: Ops = ScalarOps() if s.scalar else BatchOps(len(index))
    draws = o.uniform(rng, 3)
    level = _fixed_or_drawn(o, config.difficulty, len(t.level_hp), draws[0])
    arena = _fixed_or_drawn(o, config.arena, len(t.arena_size), draws[1])
    boss_hp = t.boss_max_hp * t.level_hp[level]
    size = t.arena_size[arena]
    s.assign(index, boss_hp=boss_hp, boss_max_hp=boss_hp, stamina=t.max_stamina,
             player_hp=rules.max_hp, distance=o.minimum(3.0 + 5.0 * draws[2], size), time=0.0,
             phase=0, last_move=-1, heals_left=rules.heals, decisions=0, difficulty=level,
             arena=arena, boss_damage_mult=t.level_damage[level] * t.arena_damage[arena],
             visibility=t.arena_visibility[arena], dodge_mult=t.arena_dodge[arena],
             arena_size=size)
    s.clear(index, "ready_at")


def _fixed_or_drawn(o: Ops, fixed: int, options: int, draw: Any) -> Any:
    if fixed >= 0:
        return fixed if isinstance(o, ScalarOps) else np.full(o.n, fixed)
    return o.minimum(o.to_int(draw * options), options - 1)


# One pass, top to bottom, in sections: splitting it would add per-call overhead to the single
# env, whose whole step budget is about 25 microseconds.
def step(  # noqa: PLR0915
    s: FightState, move: Any, t: GameTables, rules: PlayerRules, config: FightConfig, o: Ops, u: Any
) -> StepResult:
    """Resolve one exchange in every env; ``u`` holds RANDOM_DRAWS uniforms per env."""
    p = s.params
    where, maximum, minimum, clip, not_ = o.where, o.maximum, o.minimum, o.clip, o.not_
    legal = is_legal(o.pick(s.ready_at, move), s.time, o.cell(t.phase_allows, s.phase, move),
                     s.stamina, t.stamina_cost[move])
    move = where(legal, move, t.phase_fallback[s.phase])
    (windup, active, recovery, damage, reach, advance, dodgeability, blockable, guard,
     counter_damage, knockback, cooldown, stamina_cost) = o.lookup(t.move_stats, s.phase, move)
    damage = damage * s.boss_damage_mult
    distance = maximum(s.distance - advance, 0.0)
    attacking = (damage > 0.0) & (distance <= reach)

    # The player reads the telegraph in time, or has learnt the pattern and anticipates it.
    reaction = p["fastest_reaction"] + p["reaction_spread"] * u[0]
    previous = s.last_move + 1
    familiarity = o.pick2(s.knowledge, previous, move) / (o.pick(s.knowledge_total, previous) + 2.0)
    anticipated = u[1] < familiarity
    reacted = (reaction < windup * s.visibility) | anticipated
    dodges = reacted & ((u[2] < p["dodge_frequency"]) | anticipated)
    blocks = reacted & not_(dodges) & (u[2] < p["dodge_or_block"])
    trades = reacted & not_(dodges | blocks) & (u[2] > p["trade_above"])
    skill = where(anticipated, p["anticipating_skill"], p["dodge_skill"])
    evaded = dodges & (u[3] < skill * dodgeability * s.dodge_mult)
    hit = attacking & not_(evaded)
    guarded = hit & blocks & (blockable > 0.0)
    taken = hit * damage * (1.0 - guarded * rules.guard) * p["armor"]

    # The opening the move leaves: heal, or attack (closing in first for melee).
    heals = (s.player_hp - taken < p["heal_below"]) & (s.heals_left > 0)
    attacks = not_(heals) & (trades | (u[4] < p["aggression"]))
    ranged = attacks & (u[5] < p["ranged_ratio"])
    heavy = attacks & not_(ranged) & (u[5] < p["heavy_cut"])
    # The player's opening: the move's recovery, plus its active time when it does not threaten
    # them (dodged, a guard, out of reach), plus the wind-up when they attack through it.
    opening = recovery + (evaded | not_(attacking)) * active + trades * windup
    approach = where(ranged, 0.0, maximum(distance - rules.melee_reach, 0.0) / APPROACH_SPEED)
    swings = clip((opening - approach) / rules.hit_seconds, 0.0, p["combo_length"])
    per_hit = where(ranged, rules.ranged_damage,
                      where(heavy, rules.heavy_damage, rules.light_damage))
    bonus = 1.0 + 0.3 * (anticipated | evaded)
    dealt = attacks * swings * per_hit * bonus * p["power"] * (1.0 - guard)
    countered = attacks * counter_damage * p["armor"]
    healed = heals * rules.heal_amount

    # Bookkeeping: positions, time, stamina, cooldowns, health, phase.
    after = where(attacks & not_(ranged), minimum(distance, rules.melee_reach), distance)
    after = after + hit * knockback
    s.distance = clip(after + 0.5 * (p["preferred_range"] - after), 0.0, s.arena_size)
    duration = windup + active + recovery
    s.time = s.time + duration
    s.session_seconds = s.session_seconds + duration
    o.put(s.ready_at, move, s.time + cooldown)
    s.stamina = minimum(s.stamina - stamina_cost + t.stamina_regen * duration,
                          t.max_stamina)
    s.heals_left = s.heals_left - heals
    margin_before = (maximum(s.boss_hp, 0.0) / s.boss_max_hp
                     - maximum(s.player_hp, 0.0) / rules.max_hp)
    s.boss_hp = s.boss_hp - dealt
    s.player_hp = minimum(s.player_hp - taken - countered + healed, rules.max_hp)
    boss_fraction = maximum(s.boss_hp, 0.0) / s.boss_max_hp
    player_fraction = maximum(s.player_hp, 0.0) / rules.max_hp
    s.phase = o.count_at_or_below(boss_fraction, t.phase_thresholds)
    s.decisions = s.decisions + 1

    # What a game observes of the player, and what the player learns of the boss.
    response = where(dodges, DODGE, where(blocks, BLOCK, -1))
    offense = where(heals, HEAL, where(ranged, RANGED, where(heavy, HEAVY, LIGHT)))
    responded = EMA * (dodges | blocks)
    acted = EMA * (heals | attacks)
    o.decay(s.shares, 1.0 - EMA)
    o.add(s.shares, response, responded)
    o.add(s.shares, offense, acted)
    s.share_total = s.share_total * (1.0 - EMA) + responded + acted
    s.dodge_rate = s.dodge_rate + EMA * attacking * (dodges - s.dodge_rate)
    s.seen_reaction = s.seen_reaction + EMA * attacking * (reaction - s.seen_reaction)
    # ATTACK_PATTERNS seen in this exchange, as bits: combo, hit_and_run, ranged_poke,
    # counter_attack, button_mash.
    seen = ((swings >= 2.0) + s.range_keeper + 4 * ranged + 8 * (evaded | guarded)
            + 16 * trades)
    o.blend(s.patterns, EMA * attacks, seen)
    o.add2(s.knowledge, previous, move, p["pattern_learning"])
    o.add(s.knowledge_total, previous, p["pattern_learning"])
    o.add2(s.habits, previous, move, 1.0)
    o.add(s.habits_total, previous, 1.0)
    s.last_move = move

    boss_down = s.boss_hp <= 0.0
    player_down = (s.player_hp <= 0.0) & not_(boss_down)
    terminated = boss_down | player_down
    truncated = not_(terminated) & (s.time >= t.max_fight_seconds)
    margin = boss_fraction - player_fraction
    ended = terminated | truncated
    if config.objective == "defeat":
        # Winning, shaped by the HP margin as a potential that is 0 once the fight ends (Ng et
        # al. 1999): the damage race guides learning but every fight's return is its outcome.
        margin_after = where(ended, 0.0, margin)
        reward = 1.0 * player_down - 1.0 * boss_down + margin_after - margin_before
    else:
        reward = o.when(ended, lambda *a: engagement_reward(o, t, *a), s.difficulty, s.fights,
                        s.history, s.time, boss_down, margin)
    reward = reward - 0.05 * not_(legal)
    if o.any(ended):
        _record_series(s, o, ended, player_down, boss_down)
    return StepResult(reward, terminated, truncated, boss_down, margin, move, anticipated, evaded,
                      guarded, hit, trades, heals, attacks, ranged, taken + countered, dealt,
                      duration)


STEER_WEIGHT = 16.0
"""Weight of the engagement reward's win-rate steering. For a player who wins with probability
p, its expected value is about -STEER_WEIGHT * (p - target)**2: small near the band's edges
(p = target + 0.1 costs 0.16), so the weight is large next to the close and duration terms
(each at most 0.5). Letting a weak player win takes long fights, past the level's duration
target: with weight 8 the trained boss kept the novice and the turtle at a 0.35-0.39 win
rate, with 16 at 0.39-0.44 (duel, normal, 120 fights each)."""


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
    steer = (player_won - target) * (target - recent) * STEER_WEIGHT
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


def is_legal(ready_at: Any, now: Any, allowed: Any, stamina: Any, cost: Any) -> Any:
    """The rule for a move (elementwise): off cooldown, allowed in the phase, affordable."""
    return (ready_at <= now + 1e-9) & allowed & (stamina >= cost)


def legal_moves(s: FightState, t: GameTables, o: Ops) -> Any:
    """Every move's legality now: (n, moves) bools for a batch, a list for one env."""
    return o.legal_moves(is_legal, s.ready_at, s.time, t.phase_allows[s.phase], s.stamina,
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
        move_habits=o.row_shares(s.habits, s.habits_total, s.last_move + 1),
        last_boss_action=s.last_move + 1,
    )
