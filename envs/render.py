"""Pictures of a fight: a text frame (``ansi``) and an image (``rgb_array``), numpy only.

A :class:`Frame` is one moment of a fight as plain values (the picture after an exchange);
:func:`ansi` and :func:`rgb_array` draw it. The image is a top-down view of the arena:

- the floor, as long as the arena (the largest arena of the game fills the width; the dark
  area beyond a smaller arena's far wall is out of bounds), with a tick every metre;
- the boss on the left, its body coloured by phase, and the player (blue) at their distance;
- the boss's telegraph of its last move, coloured by the move's ``action_type`` (red
  aggressive, teal defensive, amber tactical): a ring round the boss, a wind-up diamond
  above it and the move's reach as a band on the floor;
- what the player did: a dodge is a player stepped off the line (a ghost where they stood),
  a block is a shield between player and boss, a hit is a yellow flash, a heal a green cross,
  a ranged reply a dashed shot; a white flash behind the boss means the player hurt it;
- the health bars at the top (each with a swatch of its fighter's colour: boss left, player
  right), the boss's stamina under its bar, one pip per phase, and the fight clock at the
  bottom with a beat marker that flips at every exchange.

:data:`PALETTE` holds every colour, so other renderers (the HTML replay) can match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from envs.boss_fight import FightSetup
    from envs.kernel import FightState, StepResult

Colour = tuple[int, int, int]

ACTION_COLOURS: dict[str, Colour] = {"aggressive": (235, 64, 52), "defensive": (64, 196, 160),
                                     "tactical": (245, 180, 40)}
PHASE_COLOURS: tuple[Colour, ...] = ((205, 205, 220), (250, 140, 60), (215, 60, 200),
                                     (130, 100, 250))
PALETTE: dict[str, Any] = {
    "background": (28, 30, 38), "out_of_bounds": (44, 46, 56), "floor": (92, 86, 78),
    "floor_edge": (200, 190, 165), "floor_tick": (140, 132, 118), "outline": (16, 16, 20),
    "bar_back": (70, 72, 84), "player": (70, 150, 255), "fallen": (105, 105, 110),
    "hit_flash": (255, 235, 90), "hurt_flash": (255, 255, 255), "shield": (225, 232, 245),
    "heal": (110, 230, 110), "stamina": (235, 225, 130), "clock": (150, 150, 168),
    "beat": ((90, 92, 104), (235, 235, 245)),
    "actions": ACTION_COLOURS, "phases": PHASE_COLOURS,
}
HEIGHT, WIDTH = 240, 480

# Where things are drawn, in pixels.
BAR_TOP, BAR_BOTTOM = 10, 22
BOSS_BAR = (30, 230)
PLAYER_BAR = (274, 470)
FLOOR_TOP, FLOOR_BOTTOM, FLOOR_LEFT, FLOOR_RIGHT = 62, 200, 16, 464
LINE_Y = (FLOOR_TOP + FLOOR_BOTTOM) // 2
BOSS_RADIUS, PLAYER_RADIUS = 16, 9
BOSS_X = FLOOR_LEFT + 4 + BOSS_RADIUS
CONTACT_X = BOSS_X + BOSS_RADIUS + PLAYER_RADIUS  # the player's centre at 0 m
FAR_X = FLOOR_RIGHT - 4 - PLAYER_RADIUS
SIDESTEP = 30
CLOCK_TOP, CLOCK_BOTTOM = 216, 224


@dataclass(frozen=True)
class Frame:
    """One moment of a fight, as plain values (JSON-friendly).

    HP, stamina are fractions of their maximum; distances are metres; ``dealt`` is the HP the
    player took off the boss in the last exchange and ``taken`` the HP the player lost.
    """

    boss_hp: float
    player_hp: float
    distance: float
    arena_size: float
    seconds: float
    phase: str
    arena: str
    move: str | None
    action_type: str | None
    outcome: str
    dealt: float
    taken: float
    phase_index: int = 0
    phase_count: int = 1
    boss_stamina: float = 1.0
    reach: float = 0.0
    windup_seconds: float = 0.0
    defence: str = "none"
    """How the player met the move: ``dodged``, ``blocked``, ``hit`` or ``none``."""
    reply: str = "none"
    """What the player did in the opening: ``healed``, ``melee``, ``ranged`` or ``none``."""
    anticipated: bool = False
    decisions: int = 0
    max_arena_size: float = 0.0
    """The game's largest arena (sets the drawing scale); 0 means this arena's size."""
    max_seconds: float = 0.0
    """The game's fight time limit; 0 means no clock is drawn."""

    @classmethod
    def from_state(cls, setup: FightSetup, state: FightState, last: StepResult | None,
                   row: int | None = None) -> Frame:
        """The frame of one env (``row`` of a vector env's state, or a single env's)."""
        def value(x: Any) -> Any:
            return x if row is None else x[row]

        game = setup.game
        phase = int(value(state.phase))
        return cls(
            boss_hp=max(float(value(state.boss_hp)), 0.0) / float(value(state.boss_max_hp)),
            player_hp=max(float(value(state.player_hp)), 0.0) / game.player.max_hp,
            distance=float(value(state.distance)),
            arena_size=float(value(state.arena_size)),
            seconds=float(value(state.time)),
            phase=game.phases[phase].name,
            arena=list(game.environments)[int(value(state.arena))],
            phase_index=phase,
            phase_count=len(game.phases),
            boss_stamina=float(value(state.stamina)) / max(game.boss.max_stamina, 1e-9),
            decisions=int(value(state.decisions)),
            max_arena_size=max(a.size for a in game.environments.values()),
            max_seconds=float(game.max_fight_seconds),
            **_exchange(setup, last, phase, row),
        )

    @classmethod
    def from_env(cls, env: Any) -> Frame:
        """The frame of a single :class:`envs.boss_fight.BossFightEnv` (wrapped or not) now."""
        fight = env.unwrapped
        # BossFightEnv keeps its state private; this module is its renderer.
        return cls.from_state(fight.setup, fight._state, fight._last)


def _exchange(setup: FightSetup, last: StepResult | None, phase: int,
              row: int | None) -> dict[str, Any]:
    """The Frame fields about the last exchange (none before the first)."""
    if last is None:
        return {"move": None, "action_type": None, "outcome": "", "dealt": 0.0, "taken": 0.0}

    def flag(x: Any) -> bool:
        return bool(x if row is None else x[row])

    def number(x: Any) -> float:
        return float(x if row is None else x[row])

    game = setup.game
    move = game.move_names[int(number(last.move))]
    spec = game.moves[move]
    speed = game.phases[phase].speed_multiplier
    return {
        "move": move, "action_type": spec.action_type, "outcome": outcome_text(last, row),
        "dealt": number(last.dealt), "taken": number(last.taken), "reach": float(spec.reach),
        "windup_seconds": spec.windup_ticks / game.tick_rate * speed,
        "defence": _first(("dodged", flag(last.evaded)), ("blocked", flag(last.guarded)),
                          ("hit", flag(last.hit))),
        "reply": _first(("healed", flag(last.heals)), ("ranged", flag(last.ranged)),
                        ("melee", flag(last.attacks))),
        "anticipated": flag(last.anticipated),
    }


def _first(*choices: tuple[str, bool]) -> str:
    """The first name whose flag is set, else ``none``."""
    return next((name for name, on in choices if on), "none")


def outcome_text(last: StepResult, row: int | None = None) -> str:
    """What the player did about the boss's last move, in words."""
    def flag(x: Any) -> bool:
        return bool(x if row is None else x[row])

    words = []
    if flag(last.anticipated):
        words.append("anticipated")
    if flag(last.evaded):
        words.append("dodged")
    elif flag(last.guarded):
        words.append("blocked")
    elif flag(last.hit):
        words.append("was hit")
    if flag(last.trades):
        words.append("traded blows")
    if flag(last.heals):
        words.append("healed")
    elif flag(last.attacks):
        words.append("shot back" if flag(last.ranged) else "punished")
    return ", ".join(words) or "waited"


def _bar(fraction: float, width: int = 20) -> str:
    filled = round(min(max(fraction, 0.0), 1.0) * width)
    return "#" * filled + "." * (width - filled)


def ansi(frame: Frame) -> str:
    """A few lines of text: both health bars, the distance, the last exchange."""
    cells = 30
    player_at = min(cells - 1, round(frame.distance / max(frame.arena_size, 1e-9) * (cells - 1)))
    track = ["."] * cells
    track[0] = "B"
    track[player_at] = "P" if player_at else "X"
    lines = [
        f"t={frame.seconds:6.1f}s  {frame.phase:<12} {frame.arena} ({frame.arena_size:g} m)",
        f"boss   [{_bar(frame.boss_hp)}] {frame.boss_hp:4.0%}  stamina {frame.boss_stamina:4.0%}",
        f"player [{_bar(frame.player_hp)}] {frame.player_hp:4.0%}",
        f"|{''.join(track)}| {frame.distance:4.1f} m",
    ]
    if frame.move:
        lines.append(f"boss used {frame.move} ({frame.action_type}); player {frame.outcome}; "
                     f"player lost {frame.taken:.0f} HP, boss lost {frame.dealt:.0f} HP")
    return "\n".join(lines) + "\n"


def rgb_array(frame: Frame) -> np.ndarray:
    """A ``HEIGHT x WIDTH x 3`` uint8 picture of the frame (see the module docstring)."""
    image = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[:] = PALETTE["background"]
    scale = (FAR_X - CONTACT_X) / max(frame.max_arena_size or frame.arena_size, 1e-9)
    player_x = CONTACT_X + round(min(frame.distance, frame.arena_size) * scale)
    _draw_floor(image, frame, scale)
    _draw_telegraph_zone(image, frame, scale)
    _draw_boss(image, frame)
    _draw_player(image, frame, player_x)
    _draw_hud(image, frame)
    return image


def phase_colour(index: int) -> Colour:
    """The boss's colour in its ``index``-th phase (the palette repeats past four phases)."""
    return PHASE_COLOURS[index % len(PHASE_COLOURS)]


# Drawing, back to front.

def _draw_floor(image: np.ndarray, frame: Frame, scale: float) -> None:
    _rect(image, FLOOR_TOP, FLOOR_BOTTOM, FLOOR_LEFT, FLOOR_RIGHT, PALETTE["out_of_bounds"])
    wall = CONTACT_X + round(frame.arena_size * scale) + PLAYER_RADIUS + 4
    _rect(image, FLOOR_TOP, FLOOR_BOTTOM, FLOOR_LEFT, wall, PALETTE["floor_edge"])
    _rect(image, FLOOR_TOP + 2, FLOOR_BOTTOM - 2, FLOOR_LEFT + 2, wall - 2, PALETTE["floor"])
    for metre in range(int(frame.arena_size) + 1):
        x = CONTACT_X + round(metre * scale)
        length = 10 if metre % 5 == 0 else 5
        _rect(image, FLOOR_BOTTOM - 2 - length, FLOOR_BOTTOM - 2, x, x + 1, PALETTE["floor_tick"])


def _draw_telegraph_zone(image: np.ndarray, frame: Frame, scale: float) -> None:
    if not frame.action_type or frame.reach <= 0:
        return
    colour = ACTION_COLOURS.get(frame.action_type, PALETTE["outline"])
    end = CONTACT_X + round(min(frame.reach, frame.arena_size) * scale)
    _rect(image, LINE_Y - 36, LINE_Y + 36, BOSS_X, end, colour, alpha=0.3)
    _rect(image, LINE_Y - 36, LINE_Y + 36, end - 2, end, colour)


def _draw_boss(image: np.ndarray, frame: Frame) -> None:
    body = phase_colour(frame.phase_index) if frame.boss_hp > 0 else PALETTE["fallen"]
    if frame.dealt > 0:
        _star(image, BOSS_X, LINE_Y, BOSS_RADIUS + 6, BOSS_RADIUS + 16, PALETTE["hurt_flash"])
    if frame.action_type:
        colour = ACTION_COLOURS.get(frame.action_type, PALETTE["outline"])
        _ring(image, BOSS_X, LINE_Y, BOSS_RADIUS + 3, BOSS_RADIUS + 7, colour)
        marker_y = LINE_Y - BOSS_RADIUS - 20
        _diamond(image, BOSS_X, marker_y, 11, PALETTE["outline"])
        _diamond(image, BOSS_X, marker_y, 8, colour)
    _disc(image, BOSS_X, LINE_Y, BOSS_RADIUS + 2, PALETTE["outline"])
    _disc(image, BOSS_X, LINE_Y, BOSS_RADIUS, body)


def _draw_player(image: np.ndarray, frame: Frame, x: int) -> None:
    body = PALETTE["player"] if frame.player_hp > 0 else PALETTE["fallen"]
    y = LINE_Y
    if frame.defence == "dodged":
        _disc(image, x, y, PLAYER_RADIUS, body, alpha=0.35)
        y = LINE_Y - SIDESTEP
    if frame.reply == "ranged":
        for left in range(BOSS_X + BOSS_RADIUS + 4, x - PLAYER_RADIUS - 4, 10):
            _rect(image, y - 1, y + 2, left, left + 5, body)
    if frame.defence == "hit":
        _star(image, x, y, PLAYER_RADIUS + 3, PLAYER_RADIUS + 11, PALETTE["hit_flash"])
    _disc(image, x, y, PLAYER_RADIUS + 2, PALETTE["outline"])
    _disc(image, x, y, PLAYER_RADIUS, body)
    if frame.defence == "blocked":
        side = x - PLAYER_RADIUS - 5
        _rect(image, y - 13, y + 14, side - 4, side + 2, PALETTE["outline"])
        _rect(image, y - 12, y + 13, side - 3, side + 1, PALETTE["shield"])
    if frame.reply == "healed":
        top = y - PLAYER_RADIUS - 16
        _rect(image, top, top + 12, x - 2, x + 2, PALETTE["heal"])
        _rect(image, top + 4, top + 8, x - 6, x + 6, PALETTE["heal"])


def _draw_hud(image: np.ndarray, frame: Frame) -> None:
    boss_colour = phase_colour(frame.phase_index)
    _disc(image, BOSS_BAR[0] - 12, (BAR_TOP + BAR_BOTTOM) // 2, 6, boss_colour)
    _meter(image, BAR_TOP, BAR_BOTTOM, BOSS_BAR, frame.boss_hp, boss_colour)
    _meter(image, BAR_BOTTOM + 3, BAR_BOTTOM + 6, BOSS_BAR, frame.boss_stamina,
           PALETTE["stamina"])
    _draw_phase_pips(image, frame)
    _disc(image, PLAYER_BAR[0] - 12, (BAR_TOP + BAR_BOTTOM) // 2, 6, PALETTE["player"])
    _meter(image, BAR_TOP, BAR_BOTTOM, PLAYER_BAR, frame.player_hp, PALETTE["player"])
    if frame.max_seconds > 0:
        _meter(image, CLOCK_TOP, CLOCK_BOTTOM, (30, WIDTH - 10), frame.seconds / frame.max_seconds,
               PALETTE["clock"])
    # Flips every exchange, so one that changes nothing else still shows (and a GIF encoder
    # does not merge it into the previous frame).
    beat = PALETTE["beat"][frame.decisions % 2]
    _rect(image, CLOCK_TOP - 2, CLOCK_BOTTOM + 2, 12, 22, beat)


def _draw_phase_pips(image: np.ndarray, frame: Frame) -> None:
    count = max(frame.phase_count, 1)
    left, right = BOSS_BAR
    width = (right - left) // count
    for index in range(count):
        start = left + index * width
        colour = phase_colour(index) if index <= frame.phase_index else PALETTE["bar_back"]
        _rect(image, BAR_BOTTOM + 10, BAR_BOTTOM + 15, start, start + width - 4, colour)


def _meter(image: np.ndarray, top: int, bottom: int, span: tuple[int, int], fraction: float,
           colour: Colour) -> None:
    left, right = span
    _rect(image, top, bottom, left, right, PALETTE["bar_back"])
    filled = round((right - left) * min(max(fraction, 0.0), 1.0))
    _rect(image, top, bottom, left, left + filled, colour)


# Shapes: each paints a boolean mask of the image with a colour, optionally translucent.

def _paint(image: np.ndarray, mask: np.ndarray, colour: Colour, alpha: float = 1.0) -> None:
    if alpha >= 1.0:
        image[mask] = colour
    else:
        blended = (1.0 - alpha) * image[mask] + alpha * np.asarray(colour, dtype=float)
        image[mask] = blended.round().astype(np.uint8)


def _rect(image: np.ndarray, top: int, bottom: int, left: int, right: int, colour: Colour,
          alpha: float = 1.0) -> None:
    top, bottom = max(top, 0), min(bottom, image.shape[0])
    left, right = max(left, 0), min(right, image.shape[1])
    if bottom > top and right > left:
        mask = np.zeros(image.shape[:2], dtype=bool)
        mask[top:bottom, left:right] = True
        _paint(image, mask, colour, alpha)


def _offsets(image: np.ndarray, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.ogrid[:image.shape[0], :image.shape[1]]
    return cols - x, rows - y


def _disc(image: np.ndarray, x: int, y: int, radius: float, colour: Colour,
          alpha: float = 1.0) -> None:
    dx, dy = _offsets(image, x, y)
    # (r + 0.5)^2 rounds the rim: exactly r^2 leaves one-pixel nubs at the four poles.
    _paint(image, dx * dx + dy * dy <= (radius + 0.5) ** 2, colour, alpha)


def _ring(image: np.ndarray, x: int, y: int, inner: float, outer: float,
          colour: Colour) -> None:
    dx, dy = _offsets(image, x, y)
    squared = dx * dx + dy * dy
    _paint(image, (squared > (inner + 0.5) ** 2) & (squared <= (outer + 0.5) ** 2), colour)


def _diamond(image: np.ndarray, x: int, y: int, radius: int, colour: Colour) -> None:
    dx, dy = _offsets(image, x, y)
    _paint(image, np.abs(dx) + np.abs(dy) <= radius, colour)


def _star(image: np.ndarray, x: int, y: int, inner: float, outer: float,
          colour: Colour) -> None:
    """An eight-pointed burst: a flash."""
    dx, dy = _offsets(image, x, y)
    spikes = np.cos(8.0 * np.arctan2(dy, dx)) ** 2
    reach = inner + (outer - inner) * spikes
    _paint(image, np.hypot(dx, dy) <= reach, colour)

