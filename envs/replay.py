"""Replays of boss fights: record one fight, then save it as a web page or an animated GIF.

:func:`record_fight` plays one fight of a :class:`envs.boss_fight.BossFightEnv` with a
:class:`envs.bosses.BossPolicy` and keeps, for every decision, the picture after the exchange
(a :class:`envs.render.Frame`), the player context the policy saw, the legal moves, the move
chosen, the reward, what the boss weighed (an :class:`Explanation`, when the policy has an
``explain`` method: see :class:`ExplainingBoss`) and optional free-form extras.

Explanations. A boss that can say why it chose (the trained bosses of ``agents/``) implements
``explain(observations, action_masks) -> Sequence[Explanation]``, one per row: the values it
ranked or drew from, per move (action probabilities, Q-values, blended values), the per-move
parts they were made of (a retrieval-augmented boss: the learned values, the memory's values,
the blend weight lambda), single numbers (the critic's state value, ``lam``, ``k``) and the
memory entries it retrieved (:class:`Neighbour`: move, distance, kernel weight, return, outcome,
persona tag). envs/ defines the types; agents/ fills them, so envs/ never imports agents/.

A :class:`Replay` saves as one self-contained HTML page (:meth:`Replay.save_html`: inline CSS
and JS, the replay embedded as JSON, works offline) with an animated arena, play/pause,
stepping, a speed control, a panel per decision (the player context, a bar chart of the values
per move, the retrieved neighbours) and a timeline table of every decision; or as an animated GIF of
:func:`envs.render.rgb_array` pictures (:meth:`Replay.save_gif`, needs Pillow).

Example:
>>> import gymnasium, envs
>>> from envs.replay import record_fight
>>> env = gymnasium.make("bosslab/BossFight-v0", player="dodger")
>>> replay = record_fight(env, my_policy, seed=0)  # any BossPolicy
>>> replay.save_html("fight.html")  # open in a browser; add #step=40 to start at step 40
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from envs import render
from envs.observation import ObservationLayout, PlayerContext, describe_context

Extras = Callable[[np.ndarray, np.ndarray], Mapping[str, Any]]
OUTCOME_NAMES = {1.0: "boss won", 0.0: "player won", 0.5: "timeout"}
"""How the memory's outcome numbers read (``rag.memory``'s convention)."""


class Neighbour(NamedTuple):
    """One memory entry a boss retrieved when it decided (one of a move's k nearest)."""

    move: int
    """The boss move the entry recorded, an index into the game's moves."""
    distance: float
    """Squared L2 distance between the entry's key and the decision's key."""
    weight: float
    """Its kernel weight among the move's neighbours (``rag.retrieval.kernel_weights``)."""
    value: float
    """The return that followed the entry's move."""
    outcome: float
    """How that fight ended: 1 boss won, 0 player won, 0.5 timeout."""
    persona: str
    """The entry's persona tag."""
    id: int
    """The entry's id in the memory."""


@dataclass(frozen=True)
class Explanation:
    """What a boss weighed at one decision; every per-move tuple is in the game's move order."""

    kind: str
    """What ``values`` are and how the boss plays them, e.g. ``Q-values (the highest legal)``."""
    values: tuple[float, ...]
    """The values the boss ranked or drew from, one per move, before illegal moves are masked."""
    parts: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    """Per-move numbers ``values`` came from, e.g. ``learned``, ``memory``, ``lambda``."""
    scalars: Mapping[str, float] = field(default_factory=dict)
    """Single numbers, e.g. the critic's ``state value``, ``lam``, ``k``."""
    neighbours: tuple[Neighbour, ...] = ()
    """What the memory retrieved for this decision (the k nearest entries of each move)."""

    def check(self, moves: Sequence[str]) -> None:
        """Fail if a per-move tuple or a neighbour's move does not fit the game's moves."""
        for name, row in {"values": self.values, **self.parts}.items():
            if len(row) != len(moves):
                raise ValueError(f"explanation {name!r} has {len(row)} entries but the game has "
                                 f"{len(moves)} moves ({', '.join(moves)}): give one per move.")
        for neighbour in self.neighbours:
            if not 0 <= neighbour.move < len(moves):
                raise ValueError(f"retrieved neighbour {neighbour.id} has move "
                                 f"{neighbour.move}; this game has moves 0 to {len(moves) - 1}.")

    def named(self, moves: Sequence[str]) -> dict[str, Any]:
        """As plain JSON types, per-move numbers keyed by the move names."""
        def by_move(row: tuple[float, ...]) -> dict[str, Any]:
            return {move: _plain(value) for move, value in zip(moves, row, strict=True)}

        return {"kind": self.kind, "values": by_move(self.values),
                "parts": {name: by_move(row) for name, row in self.parts.items()},
                "scalars": _plain(dict(self.scalars)),
                "neighbours": [_plain({**n._asdict(), "move": moves[n.move],
                                       "outcome_name": outcome_name(n.outcome)})
                               for n in self.neighbours]}


@runtime_checkable
class ExplainingBoss(Protocol):
    """A boss that can say what it weighed: :func:`record_fight` keeps it for every decision."""

    name: str

    def select_moves(self, observations: np.ndarray, action_masks: np.ndarray) -> np.ndarray: ...

    def explain(self, observations: np.ndarray,
                action_masks: np.ndarray) -> Sequence[Explanation]: ...


def outcome_name(outcome: float) -> str:
    """``boss won``, ``player won``, ``timeout``, or the number for any other outcome."""
    return OUTCOME_NAMES.get(float(outcome), f"{float(outcome):g}")


@dataclass(frozen=True)
class ReplayStep:
    """One boss decision and the exchange it led to."""

    frame: render.Frame
    """The picture after the exchange."""
    context: PlayerContext
    """What the policy saw of the player when it decided."""
    legal_moves: tuple[str, ...]
    """The moves the boss could use when it decided."""
    move: str
    """The move the policy chose (an illegal one is replaced by the env: see ``frame.move``)."""
    reward: float
    extras: dict[str, Any] = field(default_factory=dict)
    """Optional per-decision extras, e.g. ``{"values": {move: float}, "retrieved": [...]}``."""
    explanation: Explanation | None = None
    """What the boss weighed when it decided, if it can say (:class:`ExplainingBoss`)."""


@dataclass(frozen=True)
class Replay:
    """One recorded fight: who fought, every decision, and how it ended."""

    game: str
    persona: str
    boss: str
    steps: tuple[ReplayStep, ...]
    outcome: dict[str, Any]
    """The env's end-of-fight info with persona, difficulty and environment as names, plus
    ``ended`` (``terminated``, ``timeout`` or ``cut_short``), ``steps`` and ``total_reward``."""
    moves: tuple[str, ...] = ()
    """The game's moves, in order (what the explanations' per-move tuples are indexed by)."""

    def to_dict(self) -> dict[str, Any]:
        """The replay as plain JSON types (non-finite numbers become ``None``)."""
        return {
            "game": self.game, "persona": self.persona, "boss": self.boss,
            "moves": list(self.moves), "outcome": _plain(self.outcome),
            "steps": [self._step_dict(step) for step in self.steps],
        }

    def _step_dict(self, step: ReplayStep) -> dict[str, Any]:
        plain = _plain({"frame": asdict(step.frame), "context": asdict(step.context),
                        "legal_moves": step.legal_moves, "move": step.move,
                        "reward": step.reward, "extras": step.extras})
        explanation = step.explanation
        plain["explanation"] = None if explanation is None else explanation.named(self.moves)
        return dict(plain)

    def save_html(self, path: str | Path) -> Path:
        """Write the replay as one self-contained, offline HTML page; returns its path."""
        payload = {"replay": self.to_dict(), "palette": _plain(render.PALETTE)}
        title = f"{self.boss} vs {self.persona} ({self.game})"
        page = (_HTML.replace("__TITLE__", html.escape(title))
                .replace("__DATA__", script_json(payload)))
        return _write(path, page.encode("utf-8"))

    def save_gif(self, path: str | Path, fps: int = 4) -> Path:
        """Write an animated GIF, one :func:`envs.render.rgb_array` picture per decision."""
        if fps < 1:
            raise ValueError(f"fps must be >= 1, got {fps}.")
        if not self.steps:
            raise ValueError("this replay has no steps, so there is nothing to animate.")
        try:
            from PIL import Image  # noqa: PLC0415 - Pillow is optional in envs/
        except ImportError as error:
            raise ImportError("save_gif needs Pillow: pip install pillow") from error
        images = [Image.fromarray(render.rgb_array(step.frame)) for step in self.steps]
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        images[0].save(target, format="GIF", save_all=True, append_images=images[1:],
                       duration=round(1000 / fps), loop=0)
        return target


def record_fight(env: Any, policy: Any, seed: int | None = None, max_steps: int = 2000,
                 extras: Extras | None = None, explain: bool = True) -> Replay:
    """Play one fight of ``env`` with ``policy`` and record every decision.

    ``env`` is a single ``BossFightEnv`` (as made by ``gymnasium.make``); ``policy`` follows
    :class:`envs.bosses.BossPolicy`. A policy with ``explain`` (:class:`ExplainingBoss`) is
    asked, at each decision and before it chooses, what it weighs (``explain=False`` skips
    it). ``extras(observation, mask)``, if given, is called at each decision and its mapping
    kept in the step. The fight is reset with ``seed`` and played until it ends, or for at most
    ``max_steps`` decisions (then ``outcome["ended"]`` is ``"cut_short"`` and ``player_won``
    is ``None``).
    """
    fight = _check_arguments(env, policy, max_steps)
    moves = fight.setup.game.move_names
    explains = explain and callable(getattr(policy, "explain", None))
    observation, _ = env.reset(seed=seed)
    steps: list[ReplayStep] = []
    ended, info = False, {}
    while not ended and len(steps) < max_steps:
        mask = np.asarray(fight.action_masks(), dtype=bool)
        context = player_context(fight.context_columns(), fight.layout)
        explanation = _explanation(policy, observation, mask, moves) if explains else None
        chosen = _choose(policy, observation, mask, len(moves))
        noted = dict(extras(observation, mask)) if extras is not None else {}
        observation, reward, terminated, truncated, info = env.step(chosen)
        ended = bool(terminated or truncated)
        steps.append(ReplayStep(
            frame=render.Frame.from_env(env), context=context,
            legal_moves=tuple(m for m, legal in zip(moves, mask, strict=True) if legal),
            move=moves[chosen], reward=float(reward), extras=noted, explanation=explanation))
    outcome = _outcome(fight, info, steps, terminated=bool(ended and terminated))
    return Replay(game=fight.setup.game.name, persona=str(outcome["persona"]),
                  boss=str(getattr(policy, "name", type(policy).__name__)),
                  steps=tuple(steps), outcome=outcome, moves=tuple(moves))


def player_context(columns: Any, layout: ObservationLayout) -> PlayerContext:
    """The PlayerContext behind one env's context columns, difficulty included."""
    context = describe_context(columns._asdict())
    level = int(columns.difficulty)
    if 0 <= level < len(layout.difficulty_levels):
        context = replace(context, difficulty_preference=layout.difficulty_levels[level])
    return context


def script_json(value: Any) -> str:
    """JSON that is safe inside an HTML ``<script>`` element (no ``</script>``, no ``<!--``)."""
    text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _check_arguments(env: Any, policy: Any, max_steps: int) -> Any:
    fight = getattr(env, "unwrapped", env)
    needed = ("action_masks", "context_columns", "setup", "layout", "persona_names")
    if not all(hasattr(fight, name) for name in needed) or hasattr(fight, "num_envs"):
        raise TypeError(f"record_fight needs one BossFightEnv, e.g. gymnasium.make("
                        f"'bosslab/BossFight-v0'), not {type(fight).__name__}.")
    if not callable(getattr(policy, "select_moves", None)):
        raise TypeError(f"policy {policy!r} has no select_moves(observations, action_masks): "
                        f"pass an envs.bosses.BossPolicy.")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}.")
    return fight


def _choose(policy: Any, observation: np.ndarray, mask: np.ndarray, moves: int) -> int:
    chosen = int(np.asarray(policy.select_moves(observation[None], mask[None])).reshape(-1)[0])
    if not 0 <= chosen < moves:
        raise ValueError(f"policy {getattr(policy, 'name', policy)!r} chose move {chosen}; "
                         f"this game has moves 0 to {moves - 1}.")
    return chosen


def _explanation(policy: Any, observation: np.ndarray, mask: np.ndarray,
                 moves: Sequence[str]) -> Explanation:
    """The policy's explanation of this one decision, checked against the game's moves."""
    explained = list(policy.explain(observation[None], mask[None]))
    if len(explained) != 1 or not isinstance(explained[0], Explanation):
        raise TypeError(f"policy {getattr(policy, 'name', policy)!r}: explain() must return one "
                        f"envs.replay.Explanation per observation row, got {explained!r:.200}.")
    explained[0].check(moves)
    return explained[0]


def _outcome(fight: Any, info: Mapping[str, Any], steps: list[ReplayStep],
             terminated: bool) -> dict[str, Any]:
    """The env's end-of-fight info with names, or what is known of a fight cut short."""
    layout, total = fight.layout, sum(step.reward for step in steps)
    if "player_won" not in info:
        last = steps[-1].frame
        names = fight.persona_names
        return {"player_won": None, "fight_seconds": last.seconds,
                "hp_margin": last.boss_hp - last.player_hp,
                "persona": names[0] if len(names) == 1 else "unknown",
                "difficulty": steps[-1].context.difficulty_preference,
                "environment": last.arena, "ended": "cut_short", "steps": len(steps),
                "total_reward": total}
    outcome = {key: _plain(value) for key, value in info.items()}
    outcome.update(
        persona=fight.persona_names[int(info["persona"])],
        difficulty=layout.difficulty_levels[int(info["difficulty"])],
        environment=layout.environments[int(info["environment"])],
        ended="terminated" if terminated else "timeout", steps=len(steps), total_reward=total)
    return outcome


def _plain(value: Any) -> Any:  # noqa: PLR0911 - one return per JSON type
    """``value`` as JSON types: numpy and dataclasses unwrapped, NaN and infinities None."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, np.generic | np.ndarray):
        return _plain(value.tolist())
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item) for item in value]
    return str(value)


def _write(path: str | Path, content: bytes) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    return target


_HTML = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
:root { --bg: #1c1e26; --panel: #262833; --ink: #e6e6ee; --dim: #9a9cab; --line: #3a3d4c; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; }
header { padding: 12px 20px; border-bottom: 1px solid var(--line); }
h1 { margin: 0 0 6px; font-size: 20px; font-weight: 600; }
.chips { display: flex; flex-wrap: wrap; gap: 6px; }
.chip { background: var(--panel); border: 1px solid var(--line); border-radius: 12px;
  padding: 1px 10px; color: var(--dim); }
.chip b { color: var(--ink); font-weight: 600; }
main { display: grid; grid-template-columns: minmax(0, 960px) minmax(340px, 1fr); gap: 16px;
  padding: 16px 20px; }
canvas { width: 100%; height: auto; display: block; background: #1c1e26;
  border: 1px solid var(--line); border-radius: 6px; }
.controls { display: flex; align-items: center; gap: 8px; margin-top: 8px; flex-wrap: wrap; }
button, select { background: var(--panel); color: var(--ink); border: 1px solid var(--line);
  border-radius: 4px; padding: 4px 10px; font: inherit; cursor: pointer; }
button:hover { border-color: var(--dim); }
#scrub { flex: 1; min-width: 160px; }
#counter { color: var(--dim); min-width: 110px; text-align: right; }
aside { background: var(--panel); border: 1px solid var(--line); border-radius: 6px;
  padding: 10px 14px; align-self: start; }
aside h2 { font-size: 15px; margin: 0 0 6px; }
aside h3 { font-size: 12px; text-transform: uppercase; letter-spacing: .06em;
  color: var(--dim); margin: 12px 0 4px; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 2px 10px; margin: 0; }
dt { color: var(--dim); } dd { margin: 0; }
.move { display: inline-block; border-radius: 4px; padding: 0 6px; margin: 1px 2px 1px 0;
  border: 1px solid var(--line); color: var(--dim); }
.move.chosen { color: #111; font-weight: 600; }
.bar { display: grid; grid-template-columns: 110px 1fr 52px; gap: 6px; align-items: center; }
.bar span.fill { display: block; height: 8px; background: #7a9cff; border-radius: 3px; }
.bar.best span.fill { background: #f5b428; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font-size: 12px;
  color: var(--dim); }
section.timeline { padding: 0 20px 24px; }
section.timeline h2 { font-size: 16px; margin: 8px 0; }
.table-wrap { max-height: 420px; overflow: auto; border: 1px solid var(--line);
  border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 12.5px; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
th { position: sticky; top: 0; background: var(--panel); color: var(--dim); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.step-row { cursor: pointer; }
tr.step-row:hover { background: #2c2f3b; }
tr.step-row.current { background: #34384a; outline: 1px solid #7a9cff; }
.ctx { color: var(--dim); max-width: 360px; }
.extra { color: var(--dim); max-width: 260px; }
.bad { color: #ff8a7a; }
table.weighed, table.nearest { font-size: 12px; }
table.weighed td, table.nearest td, table.weighed th, table.nearest th { padding: 2px 5px; }
table.weighed td.bar-cell { width: 30%; min-width: 50px; }
table.weighed span.fill { display: block; height: 8px; background: #7a9cff; border-radius: 3px; }
table.weighed tr.best span.fill { background: #f5b428; }
table.weighed tr.illegal { opacity: 0.45; }
table.weighed tr.chosen td:first-child { font-weight: 700; color: #f5b428; }
.nearest-wrap { max-height: 260px; overflow: auto; border: 1px solid var(--line);
  border-radius: 4px; }
.legend { display: flex; gap: 14px; flex-wrap: wrap; color: var(--dim); margin-top: 8px;
  font-size: 12px; }
.legend i { display: inline-block; width: 10px; height: 10px; border-radius: 50%;
  margin-right: 4px; vertical-align: -1px; }
@media (max-width: 1100px) { main { grid-template-columns: 1fr; } }
</style>
</head>
<body>
<header>
  <h1 id="title">__TITLE__</h1>
  <div class="chips" id="summary"></div>
</header>
<main>
  <section>
    <canvas id="arena" width="960" height="420" aria-label="animated arena"></canvas>
    <div class="controls">
      <button id="back" title="previous decision (left arrow)">&#9664;&#9664; back</button>
      <button id="play" title="play / pause (space)">&#9654; play</button>
      <button id="forward" title="next decision (right arrow)">forward &#9654;&#9654;</button>
      <input id="scrub" type="range" min="1" value="1" aria-label="decision">
      <label>speed <select id="speed">
        <option value="0.5">0.5&times;</option><option value="1" selected>1&times;</option>
        <option value="2">2&times;</option><option value="4">4&times;</option>
        <option value="8">8&times;</option></select></label>
      <span id="counter"></span>
    </div>
    <div class="legend" id="legend"></div>
  </section>
  <aside id="decision"></aside>
</main>
<section class="timeline">
  <h2>Timeline of decisions</h2>
  <div class="table-wrap"><table>
    <thead><tr><th>#</th><th>t (s)</th><th>phase</th><th>move</th><th>legal</th>
      <th>player's response</th><th>player &minus;HP</th><th>boss &minus;HP</th>
      <th>reward</th><th>player context (when deciding)</th><th>what the boss weighed</th>
      </tr></thead>
    <tbody id="timeline"></tbody>
  </table></div>
</section>
<script type="application/json" id="replay-data">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("replay-data").textContent);
const R = DATA.replay, P = DATA.palette, STEPS = R.steps;
const rgb = (c, a) => a === undefined ? `rgb(${c.join(",")})` : `rgba(${c.join(",")},${a})`;
const actionColour = (t) => P.actions[t] || P.outline;
const phaseColour = (i) => P.phases[i % P.phases.length];
const pct = (x) => `${Math.round(100 * x)}%`;
const fmt = (x, d = 1) => (x === null || x === undefined) ? "-" : Number(x).toFixed(d);
const clamp01 = (x) => Math.max(0, Math.min(1, x));
const lerp = (a, b, t) => a + (b - a) * t;
const hp = (x) => fmt(x, x < 10 ? 1 : 0);
const ease = (t) => { t = clamp01(t); return t * t * (3 - 2 * t); };
const num = (x) => Number.isInteger(x) ? String(x) : fmt(x, 3);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "style") node.style.cssText = value; else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/* The fight before decision i: the previous picture, or the starting state. */
function before(i) {
  if (i > 0) return STEPS[i - 1].frame;
  const f = STEPS[0].frame;
  return Object.assign({}, f, {boss_hp: 1, boss_stamina: 1, seconds: 0, decisions: 0,
    player_hp: STEPS[0].context.health_percentage, phase_index: 0, move: null,
    action_type: null, defence: "none", reply: "none", dealt: 0, taken: 0});
}

/* ---- the arena ---- */
const canvas = document.getElementById("arena"), g = canvas.getContext("2d");
const W = canvas.width, H = canvas.height;
const FLOOR = {top: 120, bottom: 350, left: 24, right: W - 24};
const LINE_Y = (FLOOR.top + FLOOR.bottom) / 2, BOSS_R = 32, PLAYER_R = 17;
const BOSS_X = FLOOR.left + 10 + BOSS_R, CONTACT_X = BOSS_X + BOSS_R + PLAYER_R;
const FAR_X = FLOOR.right - 10 - PLAYER_R, SIDESTEP = 58;

function disc(x, y, r, fill, alpha) {
  g.beginPath(); g.arc(x, y, r, 0, 2 * Math.PI); g.fillStyle = rgb(fill, alpha); g.fill();
}
function star(x, y, inner, outer, fill, alpha) {
  g.beginPath();
  for (let k = 0; k < 16; k++) {
    const r = k % 2 ? inner : outer, a = k * Math.PI / 8;
    g.lineTo(x + r * Math.cos(a), y + r * Math.sin(a));
  }
  g.closePath(); g.fillStyle = rgb(fill, alpha); g.fill();
}
function text(s, x, y, colour, size, align, weight) {
  g.font = `${weight || 500} ${size || 13}px system-ui, sans-serif`;
  g.textAlign = align || "left"; g.textBaseline = "middle";
  g.fillStyle = typeof colour === "string" ? colour : rgb(colour); g.fillText(s, x, y);
}
function meter(x, y, w, h, fraction, fill) {
  g.fillStyle = rgb(P.bar_back); g.fillRect(x, y, w, h);
  g.fillStyle = rgb(fill); g.fillRect(x, y, w * clamp01(fraction), h);
}

function drawHud(v) {
  const boss = phaseColour(v.phaseIndex);
  disc(34, 26, 9, boss);
  text(`BOSS  ${R.boss}`, 50, 26, "#e6e6ee", 13, "left", 700);
  text(`HP ${pct(v.bossHp)}`, 440, 26, boss, 13, "right", 700);
  meter(34, 40, 406, 14, v.bossHp, boss);
  meter(34, 58, 406, 5, v.stamina, P.stamina);
  text("stamina", 444, 61, P.stamina, 10, "left");
  const width = 406 / v.phaseCount;
  for (let k = 0; k < v.phaseCount; k++) {
    g.fillStyle = rgb(k <= v.phaseIndex ? phaseColour(k) : P.bar_back);
    g.fillRect(34 + k * width, 70, width - 6, 6);
  }
  text(`phase: ${v.phase}`, 34, 90, boss, 12, "left", 600);
  disc(W - 440, 26, 9, P.player);
  text(`PLAYER  ${R.persona}`, W - 424, 26, "#e6e6ee", 13, "left", 700);
  text(`HP ${pct(v.playerHp)}`, W - 34, 26, P.player, 13, "right", 700);
  meter(W - 440, 40, 406, 14, v.playerHp, P.player);
}

function drawFloor(v, scale) {
  g.fillStyle = rgb(P.out_of_bounds);
  g.fillRect(FLOOR.left, FLOOR.top, FLOOR.right - FLOOR.left, FLOOR.bottom - FLOOR.top);
  const wall = CONTACT_X + v.arenaSize * scale + PLAYER_R + 8;
  g.fillStyle = rgb(P.floor_edge);
  g.fillRect(FLOOR.left, FLOOR.top, wall - FLOOR.left, FLOOR.bottom - FLOOR.top);
  g.fillStyle = rgb(P.floor);
  g.fillRect(FLOOR.left + 3, FLOOR.top + 3, wall - FLOOR.left - 6, FLOOR.bottom - FLOOR.top - 6);
  for (let m = 0; m <= Math.floor(v.arenaSize); m++) {
    const x = CONTACT_X + m * scale, long = m % 5 === 0;
    g.fillStyle = rgb(P.floor_tick); g.fillRect(x, FLOOR.bottom - 4 - (long ? 14 : 7), 1.5,
      long ? 14 : 7);
    if (long) text(`${m} m`, x + 3, FLOOR.bottom - 22, P.floor_tick, 10);
  }
  text(`${v.arena} \u00b7 ${v.arenaSize} m`, FLOOR.left + 10, FLOOR.top + 14, P.floor_edge, 12);
  if (wall < FLOOR.right - 40) {
    text("out of bounds", (wall + FLOOR.right) / 2, LINE_Y, P.floor_tick, 12, "center");
  }
}

function drawTelegraph(v, scale) {
  if (!v.move) return;
  const colour = actionColour(v.actionType), strength = v.telegraph;
  if (v.reach > 0) {
    const end = CONTACT_X + Math.min(v.reach, v.arenaSize) * scale;
    g.fillStyle = rgb(colour, 0.12 + 0.2 * strength);
    g.fillRect(BOSS_X, LINE_Y - 62, end - BOSS_X, 124);
    g.fillStyle = rgb(colour, strength); g.fillRect(end - 3, LINE_Y - 62, 3, 124);
    text(`reach ${fmt(v.reach)} m`, end - 6, LINE_Y + 52, colour, 11, "right");
  }
  g.beginPath(); g.arc(BOSS_X, LINE_Y, BOSS_R + 6 + 4 * strength, 0, 2 * Math.PI);
  g.lineWidth = 3 + 4 * strength; g.strokeStyle = rgb(colour, 0.4 + 0.6 * strength); g.stroke();
  const y = LINE_Y - BOSS_R - 34, size = 10 + 6 * strength;
  g.beginPath(); g.moveTo(BOSS_X, y - size); g.lineTo(BOSS_X + size, y);
  g.lineTo(BOSS_X, y + size); g.lineTo(BOSS_X - size, y); g.closePath();
  g.fillStyle = rgb(colour); g.fill(); g.lineWidth = 2; g.strokeStyle = rgb(P.outline);
  g.stroke();
  text(`${v.move} \u00b7 ${v.actionType} \u00b7 wind-up ${fmt(v.windup, 2)} s`,
    BOSS_X + 22, y, colour, 13, "left", 700);
}

function drawBossHurt(v) {
  if (!v.replyOn || v.dealt <= 0) return;
  star(BOSS_X, LINE_Y, BOSS_R + 8, BOSS_R + 26, P.hurt_flash, 0.9);
  text(`\u2212${hp(v.dealt)}`, BOSS_X, LINE_Y + BOSS_R + 38, P.hurt_flash, 15, "center", 700);
}

function drawBoss(v) {
  disc(BOSS_X, LINE_Y, BOSS_R + 3, P.outline);
  disc(BOSS_X, LINE_Y, BOSS_R, v.bossHp > 0 ? phaseColour(v.phaseIndex) : P.fallen);
}

function drawPlayer(v, x) {
  const body = v.playerHp > 0 ? P.player : P.fallen;
  const y = LINE_Y - (v.defence === "dodged" ? SIDESTEP * v.dodge : 0);
  if (v.defence === "dodged" && v.dodge > 0) disc(x, LINE_Y, PLAYER_R, body, 0.3);
  if (v.replyOn && v.reply === "ranged") {
    g.setLineDash([10, 8]); g.lineWidth = 3; g.strokeStyle = rgb(body);
    g.beginPath(); g.moveTo(x - PLAYER_R - 4, y); g.lineTo(BOSS_X + BOSS_R + 6, LINE_Y);
    g.stroke(); g.setLineDash([]);
  }
  if (v.defenceOn && v.defence === "hit") {
    star(x, y, PLAYER_R + 5, PLAYER_R + 20, P.hit_flash);
  }
  disc(x, y, PLAYER_R + 3, P.outline); disc(x, y, PLAYER_R, body);
  if (v.defenceOn && v.defence === "blocked") {
    g.fillStyle = rgb(P.outline); g.fillRect(x - PLAYER_R - 16, y - 25, 11, 50);
    g.fillStyle = rgb(P.shield); g.fillRect(x - PLAYER_R - 14, y - 23, 7, 46);
  }
  if (v.replyOn && v.reply === "healed") {
    g.fillStyle = rgb(P.heal); g.fillRect(x - 4, y - PLAYER_R - 34, 8, 24);
    g.fillRect(x - 12, y - PLAYER_R - 26, 24, 8);
  }
  const words = {dodged: "DODGED", blocked: "BLOCKED", hit: "HIT"};
  if (v.defenceOn && words[v.defence]) {
    const hurt = v.taken > 0 ? ` \u2212${hp(v.taken)}` : "";
    text(words[v.defence] + hurt, x, y + PLAYER_R + 20, v.defence === "hit" ? P.hit_flash
      : P.shield, 13, "center", 700);
  } else if (v.replyOn && v.taken > 0) {
    text(`\u2212${hp(v.taken)}`, x, y + PLAYER_R + 20, P.hit_flash, 13, "center", 700);
  }
  if (v.replyOn && v.reply !== "none") {
    const said = {healed: "heals", ranged: "shoots back", melee: "punishes"}[v.reply];
    text(said, x, y - PLAYER_R - (v.reply === "healed" ? 44 : 14), body, 12, "center", 600);
  }
}

function drawDistance(v, x) {
  const y = FLOOR.bottom + 16;
  g.strokeStyle = rgb(P.floor_tick); g.lineWidth = 1;
  g.beginPath(); g.moveTo(CONTACT_X, y); g.lineTo(x, y); g.stroke();
  text(`distance ${fmt(v.distance)} m`, (CONTACT_X + x) / 2, y + 12, P.floor_edge, 11,
    "center");
}

function drawClock(v) {
  const y = H - 30;
  meter(34, y, W - 68, 8, v.maxSeconds > 0 ? v.seconds / v.maxSeconds : 0, P.clock);
  text(`t = ${fmt(v.seconds)} s of ${fmt(v.maxSeconds, 0)} s`, W - 34, y - 10, P.clock, 11,
    "right");
}

function drawBanner(text_) {
  g.fillStyle = "rgba(0,0,0,0.55)"; g.fillRect(W / 2 - 170, LINE_Y - 28, 340, 56);
  text(text_, W / 2, LINE_Y, "#ffffff", 26, "center", 800);
}

function view(i, p) {
  const a = before(i), b = STEPS[i].frame, resolved = p >= 0.6, r = ease((p - 0.6) / 0.4);
  const moved = ease((p - 0.45) / 0.3), now = resolved ? b : a;
  return {
    bossHp: lerp(a.boss_hp, b.boss_hp, r), playerHp: lerp(a.player_hp, b.player_hp, r),
    stamina: lerp(a.boss_stamina, b.boss_stamina, r), distance: lerp(a.distance, b.distance,
      moved), arenaSize: b.arena_size, maxArena: b.max_arena_size || b.arena_size,
    seconds: lerp(a.seconds, b.seconds, p), maxSeconds: b.max_seconds,
    phase: now.phase, phaseIndex: now.phase_index, phaseCount: b.phase_count, arena: b.arena,
    move: b.move, actionType: b.action_type, reach: b.reach, windup: b.windup_seconds,
    telegraph: ease(p / 0.45), defence: b.defence, defenceOn: p >= 0.45,
    dodge: ease((p - 0.45) / 0.15), reply: b.reply, replyOn: resolved,
    dealt: b.dealt, taken: b.taken,
  };
}

function draw(i, p) {
  const v = view(i, p), scale = (FAR_X - CONTACT_X) / Math.max(v.maxArena, 1e-9);
  const x = CONTACT_X + Math.min(v.distance, v.arenaSize) * scale;
  g.fillStyle = rgb(P.background); g.fillRect(0, 0, W, H);
  drawHud(v); drawFloor(v, scale); drawBossHurt(v); drawTelegraph(v, scale); drawBoss(v);
  drawPlayer(v, x); drawDistance(v, x); drawClock(v);
  if (i === STEPS.length - 1 && p >= 1) drawBanner(resultText());
}

function resultText() {
  const o = R.outcome;
  if (o.ended === "cut_short") return "RECORDING CUT SHORT";
  if (o.ended === "timeout") return "TIME OUT";
  return o.player_won ? "PLAYER WINS" : "BOSS WINS";
}

/* ---- the decision panel ---- */
function moveChip(name, chosen, actionType) {
  const style = chosen ? `background:${rgb(actionColour(actionType))}` : "";
  return el("span", {class: chosen ? "move chosen" : "move", style}, name);
}

function contextEntries(c) {
  return [
    ["movement style", c.movement_style], ["health", pct(c.health_percentage)],
    ["dodge frequency", pct(c.dodge_frequency)], ["reaction time", `${fmt(c.reaction_time, 2)} s`],
    ["frequent actions", c.frequent_actions.join(", ") || "-"],
    ["attack patterns", c.attack_patterns.join(", ") || "-"],
    ["difficulty", c.difficulty_preference], ["session", `${fmt(c.session_duration)} min`],
    ["recent deaths", c.recent_deaths], ["equipment", c.equipment_level],
  ];
}

function contextLine(c) {
  return `${c.movement_style}, HP ${pct(c.health_percentage)}, dodges ` +
    `${pct(c.dodge_frequency)}, reacts ${fmt(c.reaction_time, 2)} s; actions: ` +
    `${c.frequent_actions.join(", ") || "-"}; patterns: ${c.attack_patterns.join(", ") || "-"}` +
    `; ${c.difficulty_preference}, deaths ${c.recent_deaths}, gear ${c.equipment_level}`;
}

function valueBars(values) {
  const entries = Object.entries(values).filter(([, x]) => typeof x === "number");
  if (!entries.length) return el("pre", {}, JSON.stringify(values, null, 1));
  const top = Math.max(...entries.map(([, x]) => x));
  const low = Math.min(0, ...entries.map(([, x]) => x)), span = (top - low) || 1;
  return el("div", {}, ...entries.map(([name, x]) => el("div",
    {class: x === top ? "bar best" : "bar"}, el("span", {}, name),
    el("span", {}, el("span", {class: "fill", style: `width:${100 * (x - low) / span}%`})),
    el("span", {style: "text-align:right"}, fmt(x, 3)))));
}

function extrasBlock(extras) {
  const parts = [];
  for (const [key, value] of Object.entries(extras)) {
    parts.push(el("h3", {}, key));
    if (key === "values" && value && typeof value === "object" && !Array.isArray(value)) {
      parts.push(valueBars(value));
    } else if (Array.isArray(value)) {
      parts.push(el("ol", {style: "margin:0;padding-left:18px"},
        ...value.map((item) => el("li", {}, el("pre", {}, typeof item === "string" ? item
          : JSON.stringify(item))))));
    } else {
      parts.push(el("pre", {}, JSON.stringify(value, null, 1)));
    }
  }
  return parts;
}

/* ---- what the boss weighed (an Explanation) ---- */
function weighedTable(e, legal, chosen) {
  const moves = R.moves.length ? R.moves : Object.keys(e.values);
  const parts = Object.keys(e.parts), legalOnly = moves.filter((m) => legal.includes(m));
  const numbers = moves.map((m) => e.values[m]).filter((x) => typeof x === "number");
  const top = Math.max(...legalOnly.map((m) => e.values[m]).filter((x) => typeof x ===
    "number"));
  const low = Math.min(0, ...numbers), span = (Math.max(...numbers) - low) || 1;
  const head = el("tr", {}, el("th", {}, "move"), el("th", {}, "value"), el("th", {}, ""),
    ...parts.map((p) => el("th", {}, p)));
  const rows = moves.map((m) => {
    const x = e.values[m], classes = [legal.includes(m) ? "" : "illegal",
      m === chosen ? "chosen" : "", x === top && legal.includes(m) ? "best" : ""];
    return el("tr", {class: classes.join(" ").trim(), "data-move": m},
      el("td", {}, m), el("td", {class: "bar-cell"}, el("span", {class: "fill",
        style: `width:${typeof x === "number" ? 100 * (x - low) / span : 0}%`})),
      el("td", {class: "num"}, fmt(x, 3)),
      ...parts.map((p) => el("td", {class: "num"}, num(e.parts[p][m]))));
  });
  return el("table", {class: "weighed"}, el("thead", {}, head), el("tbody", {}, ...rows));
}

function nearestTable(neighbours) {
  if (!neighbours.length) return el("div", {class: "extra"}, "nothing: the memory is empty");
  const head = el("tr", {}, ...["move", "distance", "weight", "return", "outcome",
    "persona"].map((h) => el("th", {}, h)));
  const rows = neighbours.map((n) => el("tr", {title: `memory entry ${n.id}`},
    el("td", {}, n.move), el("td", {class: "num"}, fmt(n.distance, 3)),
    el("td", {class: "num"}, fmt(n.weight, 2)), el("td", {class: "num"}, fmt(n.value, 3)),
    el("td", {}, n.outcome_name), el("td", {}, n.persona)));
  return el("div", {class: "nearest-wrap"}, el("table", {class: "nearest"},
    el("thead", {}, head), el("tbody", {}, ...rows)));
}

function explanationBlock(s) {
  const e = s.explanation;
  if (!e) return [];
  const scalars = Object.entries(e.scalars);
  return [
    el("h3", {}, `what the boss weighed: ${e.kind}`),
    el("div", {style: "overflow-x:auto"}, weighedTable(e, s.legal_moves, s.move)),
    scalars.length ? el("dl", {style: "margin-top:6px"}, ...scalars.flatMap(([k, x]) =>
      [el("dt", {}, k), el("dd", {}, typeof x === "number" ? num(x) : x)])) : null,
    el("h3", {}, `what the memory retrieved (${e.neighbours.length} neighbours)`),
    nearestTable(e.neighbours)];
}

function explanationSummary(e) {
  if (!e) return "";
  const values = Object.entries(e.values).map(([m, x]) => `${m} ${fmt(x, 2)}`).join(", ");
  return `${e.kind}: ${values}; retrieved ${e.neighbours.length}`;
}

function renderDecision(i) {
  const s = STEPS[i], f = s.frame, t0 = before(i).seconds, panel = document.getElementById(
    "decision");
  const replaced = f.move !== s.move ? el("div", {class: "bad"},
    `illegal: the env used ${f.move} instead`) : null;
  const parts = [
    el("h2", {}, `Decision ${i + 1} of ${STEPS.length} \u00b7 t = ${fmt(t0)} s`),
    el("h3", {}, "legal moves (the boss's choice highlighted)"),
    el("div", {}, ...s.legal_moves.map((m) => moveChip(m, m === s.move, f.action_type))),
    replaced,
    el("h3", {}, "exchange"),
    el("dl", {}, el("dt", {}, "player"), el("dd", {}, f.outcome || "-"),
      el("dt", {}, "player lost"), el("dd", {}, `${fmt(f.taken, 1)} HP`),
      el("dt", {}, "boss lost"), el("dd", {}, `${fmt(f.dealt, 1)} HP`),
      el("dt", {}, "reward"), el("dd", {}, fmt(s.reward, 3)),
      el("dt", {}, "phase after"), el("dd", {}, f.phase)),
    el("h3", {}, "player context the boss saw"),
    el("dl", {}, ...contextEntries(s.context).flatMap(([k, x]) => [el("dt", {}, k),
      el("dd", {}, x)])),
    ...explanationBlock(s),
    ...extrasBlock(s.extras)];
  panel.replaceChildren(...parts.filter((part) => part !== null));
}

/* ---- the timeline ---- */
function extrasSummary(extras) {
  return Object.entries(extras).map(([key, value]) => {
    if (key === "values" && value && typeof value === "object" && !Array.isArray(value)) {
      return "values: " + Object.entries(value).map(([m, x]) => `${m} ${fmt(x, 2)}`).join(", ");
    }
    if (Array.isArray(value)) return `${key}: ${value.length} \u2013 ` +
      value.slice(0, 3).map((x) => typeof x === "string" ? x : JSON.stringify(x)).join("; ");
    return `${key}: ${JSON.stringify(value)}`;
  }).join(" | ");
}

function buildTimeline() {
  const body = document.getElementById("timeline");
  STEPS.forEach((s, i) => {
    const f = s.frame, a = before(i);
    const move = el("td", {}, moveChip(s.move, true, f.action_type),
      f.move !== s.move ? el("span", {class: "bad"}, ` \u2192 ${f.move}`) : null);
    const row = el("tr", {class: "step-row", "data-step": i},
      el("td", {class: "num"}, i + 1), el("td", {class: "num"}, fmt(a.seconds)),
      el("td", {}, a.phase), move, el("td", {}, s.legal_moves.join(", ")),
      el("td", {}, f.outcome || "-"), el("td", {class: "num"}, fmt(f.taken, 1)),
      el("td", {class: "num"}, fmt(f.dealt, 1)), el("td", {class: "num"}, fmt(s.reward, 3)),
      el("td", {class: "ctx"}, contextLine(s.context)),
      el("td", {class: "extra"}, [explanationSummary(s.explanation),
        extrasSummary(s.extras)].filter((x) => x).join(" | ")));
    row.addEventListener("click", () => { pause(); show(i, 1); });
    body.append(row);
  });
}

function buildSummary() {
  const o = R.outcome, chips = [["result", resultText().toLowerCase()],
    ["game", R.game], ["difficulty", o.difficulty], ["arena", o.environment],
    ["fight", `${fmt(o.fight_seconds)} s`], ["HP margin (boss \u2212 player)",
      fmt(o.hp_margin, 2)], ["decisions", STEPS.length],
    ["total reward", fmt(o.total_reward, 3)]];
  document.getElementById("summary").replaceChildren(...chips.map(([k, x]) =>
    el("span", {class: "chip"}, `${k} `, el("b", {}, x))));
  const legend = [["aggressive move", actionColour("aggressive")],
    ["defensive move", actionColour("defensive")], ["tactical move", actionColour("tactical")],
    ["player", P.player], ["hit", P.hit_flash], ["heal", P.heal]];
  document.getElementById("legend").replaceChildren(...legend.map(([k, c]) =>
    el("span", {}, el("i", {style: `background:${rgb(c)}`}), k)),
    el("span", {}, "boss colour = phase; white flash = boss hurt; ghost = dodge"));
}

/* ---- playback ---- */
const state = {step: 0, progress: 1, playing: false, last: 0};
const scrub = document.getElementById("scrub"), playButton = document.getElementById("play");

function stepMillis(i) {
  const seconds = STEPS[i].frame.seconds - before(i).seconds;
  return 1000 * Math.max(seconds, 0.3) / Number(document.getElementById("speed").value);
}

function show(i, p) {
  const changed = i !== state.step || !document.querySelector("tr.current");
  state.step = Math.max(0, Math.min(STEPS.length - 1, i)); state.progress = p;
  draw(state.step, p);
  if (changed) {
    scrub.value = state.step + 1;
    document.getElementById("counter").textContent = `decision ${state.step + 1} / ` +
      STEPS.length;
    document.querySelectorAll("tr.current").forEach((r) => r.classList.remove("current"));
    const row = document.querySelector(`tr[data-step="${state.step}"]`);
    if (row) {
      row.classList.add("current");
      const wrap = row.closest(".table-wrap");
      wrap.scrollTop = row.offsetTop - wrap.clientHeight / 2;
    }
    renderDecision(state.step);
  }
}

function tick(now) {
  if (!state.playing) return;
  const dt = now - state.last; state.last = now;
  let p = state.progress + dt / stepMillis(state.step), i = state.step;
  if (p >= 1) {
    if (i >= STEPS.length - 1) { show(i, 1); pause(); return; }
    i += 1; p = 0;
  }
  show(i, p);
  requestAnimationFrame(tick);
}

function play() {
  if (state.step >= STEPS.length - 1 && state.progress >= 1) show(0, 0);
  else if (state.progress >= 1) show(state.step + 1, 0);
  state.playing = true; state.last = performance.now();
  playButton.innerHTML = "&#10074;&#10074; pause"; requestAnimationFrame(tick);
}
function pause() { state.playing = false; playButton.innerHTML = "&#9654; play"; }

playButton.addEventListener("click", () => state.playing ? pause() : play());
document.getElementById("back").addEventListener("click", () => {
  pause(); show(state.step - 1, 1);
});
document.getElementById("forward").addEventListener("click", () => {
  pause(); show(state.step + 1, 1);
});
scrub.addEventListener("input", () => { pause(); show(Number(scrub.value) - 1, 1); });
document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "SELECT") return;
  if (e.key === "ArrowRight") { pause(); show(state.step + 1, 1); }
  else if (e.key === "ArrowLeft") { pause(); show(state.step - 1, 1); }
  else if (e.key === " ") { e.preventDefault(); state.playing ? pause() : play(); }
});

buildSummary();
buildTimeline();
scrub.max = STEPS.length;
const wanted = /step=(\\d+)/.exec(location.hash);
show(wanted ? Number(wanted[1]) - 1 : 0, 1);
</script>
</body>
</html>
"""
