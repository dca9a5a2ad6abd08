"""Pictures of a fight: a text frame (``ansi``) and an image (``rgb_array``), numpy only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from envs.boss_fight import FightSetup
    from envs.kernel import FightState, StepResult

ACTION_COLOURS = {"aggressive": (220, 60, 50), "defensive": (70, 130, 220),
                  "tactical": (230, 170, 40)}
HEIGHT, WIDTH = 200, 360


@dataclass(frozen=True)
class Frame:
    """One moment of a fight, as plain values."""

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

    @classmethod
    def from_state(cls, setup: FightSetup, state: FightState, last: StepResult | None,
                   row: int | None = None) -> Frame:
        def value(x: Any) -> Any:
            return x if row is None else x[row]

        game = setup.game
        move = None if last is None else game.move_names[int(value(last.move))]
        return cls(
            boss_hp=max(float(value(state.boss_hp)), 0.0) / float(value(state.boss_max_hp)),
            player_hp=max(float(value(state.player_hp)), 0.0) / game.player.max_hp,
            distance=float(value(state.distance)),
            arena_size=float(value(state.arena_size)),
            seconds=float(value(state.time)),
            phase=game.phases[int(value(state.phase))].name,
            arena=list(game.environments)[int(value(state.arena))],
            move=move,
            action_type=None if move is None else game.moves[move].action_type,
            outcome="" if last is None else outcome_text(last, row),
            dealt=0.0 if last is None else float(value(last.dealt)),
            taken=0.0 if last is None else float(value(last.taken)),
        )


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
    filled = round(fraction * width)
    return "#" * filled + "." * (width - filled)


def ansi(frame: Frame) -> str:
    """A few lines of text: both health bars, the distance, the last exchange."""
    cells = 30
    player_at = min(cells - 1, round(frame.distance / max(frame.arena_size, 1e-9) * (cells - 1)))
    track = ["."] * cells
    track[0] = "B"
    track[player_at] = "P" if player_at else "X"
    lines = [
        f"t={frame.seconds:6.1f}s  {frame.phase:<12} {frame.arena}",
        f"boss   [{_bar(frame.boss_hp)}] {frame.boss_hp:4.0%}",
        f"player [{_bar(frame.player_hp)}] {frame.player_hp:4.0%}",
        f"|{''.join(track)}| {frame.distance:4.1f} m",
    ]
    if frame.move:
        lines.append(f"boss used {frame.move} ({frame.action_type}); player {frame.outcome}; "
                     f"dealt {frame.dealt:.0f}, took {frame.taken:.0f}")
    return "\n".join(lines) + "\n"


def rgb_array(frame: Frame) -> np.ndarray:
    """A ``HEIGHT x WIDTH x 3`` picture: health bars, the arena, boss, player, telegraph."""
    image = np.full((HEIGHT, WIDTH, 3), 245, dtype=np.uint8)
    _fill(image, 12, 22, 10, 10 + int(150 * frame.boss_hp), (200, 40, 40))
    _fill(image, 12, 22, 200, 200 + int(150 * frame.player_hp), (40, 90, 200))
    _fill(image, 150, 152, 10, WIDTH - 10, (120, 120, 120))
    boss_x = 40
    scale = (WIDTH - 80) / max(frame.arena_size, 1e-9)
    player_x = boss_x + 20 + int(frame.distance * scale)
    _fill(image, 90, 150, boss_x - 15, boss_x + 15, (150, 30, 30))
    _fill(image, 115, 150, player_x - 6, player_x + 6, (30, 60, 170))
    if frame.action_type:
        colour = ACTION_COLOURS.get(frame.action_type, (0, 0, 0))
        _fill(image, 70, 82, boss_x - 15, boss_x + 15, colour)
    if frame.taken > 0:
        _fill(image, 105, 112, player_x - 6, player_x + 6, (250, 220, 0))
    return image


def _fill(image: np.ndarray, top: int, bottom: int, left: int, right: int,
          colour: tuple[int, int, int]) -> None:
    left, right = max(left, 0), min(right, image.shape[1])
    if right > left:
        image[top:bottom, left:right] = colour
