"""Gymnasium boss fights: game definitions, synthetic players and the observation contract.

Importing this package registers the environments:

- ``bosslab/BossFight-v0``: any game against any persona or population (see
  :mod:`envs.boss_fight` for the spec).
- ``bosslab/KnownAnswer-v0``: a tiny game a boss can only win with one move, for tests.
"""

from gymnasium.envs.registration import register, registry

from envs.boss_fight import BossFightEnv, BossFightVectorEnv, FightSetup
from envs.game import GameDefinition, available_games, load_game
from envs.observation import ObservationLayout, PlayerContext, Situation
from envs.persona import Persona, available_personas, available_players, load_players

# Long enough that the game's own fight timer always ends an episode first.
MAX_EPISODE_STEPS = 2000

ENV_IDS = ("bosslab/BossFight-v0", "bosslab/KnownAnswer-v0")

if ENV_IDS[0] not in registry:
    register(
        id="bosslab/BossFight-v0",
        entry_point="envs.boss_fight:BossFightEnv",
        vector_entry_point="envs.boss_fight:BossFightVectorEnv",
        max_episode_steps=MAX_EPISODE_STEPS,
    )
    register(
        id="bosslab/KnownAnswer-v0",
        entry_point="envs.boss_fight:BossFightEnv",
        vector_entry_point="envs.boss_fight:BossFightVectorEnv",
        max_episode_steps=MAX_EPISODE_STEPS,
        kwargs={"game": "known_answer", "player": "novice", "objective": "defeat"},
    )

__all__ = [
    "ENV_IDS",
    "BossFightEnv",
    "BossFightVectorEnv",
    "FightSetup",
    "GameDefinition",
    "ObservationLayout",
    "Persona",
    "PlayerContext",
    "Situation",
    "available_games",
    "available_personas",
    "available_players",
    "load_game",
    "load_players",
]
