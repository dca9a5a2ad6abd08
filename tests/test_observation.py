"""The one observation contract: a live request encodes exactly like the simulator's state."""

from typing import Any

import numpy as np
import pytest

from envs.boss_fight import BossFightEnv
from envs.observation import (
    ATTACK_PATTERNS,
    MOVEMENT_STYLES,
    PLAYER_ACTIONS,
    BossState,
    ContextColumns,
    ObservationLayout,
    PlayerContext,
    Situation,
)


def as_request(columns: ContextColumns, layout: ObservationLayout) -> Situation:
    """What a game would send for this simulator state: names and plain numbers."""
    c: dict[str, Any] = columns._asdict()
    last = int(c["last_boss_action"]) - 1
    return Situation(
        player=PlayerContext(
            frequent_actions=tuple(a for a, on in zip(PLAYER_ACTIONS, c["frequent_actions"],
                                                      strict=True) if on),
            dodge_frequency=c["dodge_frequency"],
            attack_patterns=tuple(p for p, on in zip(ATTACK_PATTERNS, c["attack_patterns"],
                                                     strict=True) if on),
            movement_style=MOVEMENT_STYLES[c["movement_style"]],
            reaction_time=c["reaction_time"],
            health_percentage=c["health_percentage"],
            session_duration=c["session_duration"],
            recent_deaths=int(c["recent_deaths"]),
            equipment_level=int(c["equipment_level"]),
        ),
        boss_health_percentage=c["boss_health"],
        battle_phase=layout.phases[c["battle_phase"]],
        environment=layout.environments[c["environment"]],
        distance=c["distance"],
        difficulty=layout.difficulty_levels[c["difficulty"]],
        boss=BossState(stamina=c["boss_stamina"], cooldowns=tuple(c["cooldowns"]),
                       habits=tuple(c["move_habits"]),
                       last_action=None if last < 0 else layout.moves[last]),
    )


@pytest.mark.parametrize("game", ["duel", "dragon_keep"])
def test_a_request_encodes_like_the_simulator_state(game: str) -> None:
    env = BossFightEnv(game=game, player="population", fights_per_player=3)
    obs, _ = env.reset(seed=5)
    actions = np.random.default_rng(5).integers(0, len(env.layout.moves), size=400)
    for action in actions:
        request = as_request(env.context_columns(), env.layout)
        np.testing.assert_array_equal(env.layout.encode_situation(request), obs)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()


def test_absent_optional_fields_encode_as_zeros() -> None:
    layout = BossFightEnv(game="duel").layout
    vector = layout.encode_situation(Situation(player=PlayerContext(), environment=None,
                                               difficulty="unheard_of"))
    names = layout.names()
    for category in ("environment", "difficulty"):
        assert not any(v for n, v in zip(names, vector, strict=True) if n.startswith(category))
    assert vector[names.index("last_boss_action[none]")] == 1.0


def test_a_request_naming_an_unknown_style_is_refused() -> None:
    layout = BossFightEnv(game="duel").layout
    with pytest.raises(ValueError, match=r"movement_style 'sneaky'.*aggressive"):
        layout.encode_situation(Situation(player=PlayerContext(movement_style="sneaky")))
