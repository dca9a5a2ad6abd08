"""Game definitions and personas: what loads, and how every mistake is reported (practice 8).

Each broken file is the shipped ``duel.yaml`` (or a shipped persona or population) with one
change, written to ``tmp_path``. Every error must be a ``ValueError`` whose message names the
file, the field and the fix.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import envs
from envs.boss_fight import BossFightEnv, BossFightVectorEnv
from envs.game import GAME_DIR, GameDefinition, load_game
from envs.persona import PLAYER_DIR, Persona, load_persona, load_players
from envs.schema import DefinitionError

Data = dict[str, Any]
PROTOCOL_VOCABULARY = {
    "boss_actions": ["attack", "defend", "special_move"],
    "action_types": ["aggressive", "defensive", "tactical"],
    "environments": ["arena", "forest", "cave"],
    "difficulty_levels": ["easy", "normal", "hard"],
}


def shipped(path: Path) -> Data:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def duel() -> Data:
    return shipped(GAME_DIR / "duel.yaml")


def write(directory: Path, name: str, data: Data) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def error_of(load: Callable[[Path], Any], path: Path) -> str:
    with pytest.raises(DefinitionError) as caught:
        load(path)
    assert isinstance(caught.value, ValueError)  # practice 11: user mistakes are ValueErrors
    return str(caught.value)


def assert_names(message: str, *parts: str) -> None:
    for part in parts:
        assert part in message, f"{part!r} missing from the message: {message}"


def _set(*keys: Any, value: Any) -> Callable[[Data], None]:
    def change(data: Data) -> None:
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value
    return change


def _drop(*keys: Any) -> Callable[[Data], None]:
    def change(data: Data) -> None:
        for key in keys[:-1]:
            data = data[key]
        del data[keys[-1]]
    return change


def _add_phase_move(data: Data) -> None:
    data["phases"][1]["moves"].append("fireball")


# (id, change to duel.yaml, the field the message must name, how-to-fix words it must contain)
GAME_ERRORS = [
    ("unknown_field", _set("moves", "attack", "damgae", value=12), "'moves.attack.damgae'",
     ("unknown field", "Allowed fields here", "damage")),
    ("negative_cooldown", _set("moves", "special_move", "cooldown", value=-1),
     "'moves.special_move.cooldown'", ("out of range", "it must be >= 0")),
    ("thresholds_out_of_order", _set("phases", 2, "starts_below", value=0.8),
     "'phases[2].starts_below'", ("thresholds must fall", "list phases from full HP down")),
    ("thresholds_equal", _set("phases", 2, "starts_below", value=0.66),
     "'phases[2].starts_below'", ("thresholds must fall",)),
    ("phase_with_undefined_move", _add_phase_move, "'phases[1].moves'",
     ("'fireball' is not defined", "define it under 'moves'", "attack, defend, special_move")),
    ("first_phase_below_full_hp", _set("phases", 0, "starts_below", value=0.9),
     "'phases[0].starts_below'", ("must start at 1.0",)),
    ("phase_without_free_move", _set("phases", 1, "moves", value=["special_move"]),
     "'phases[1].moves'", ("needs a move with no cooldown and no stamina cost",)),
    ("string_for_number", _set("moves", "attack", "damage", value="12"),
     "'moves.attack.damage'", ("must be a float", "'12'")),
    ("bool_for_number", _set("moves", "attack", "damage", value=True),
     "'moves.attack.damage'", ("must be a float", "True")),
    ("bool_for_integer", _set("moves", "attack", "windup_ticks", value=True),
     "'moves.attack.windup_ticks'", ("must be a int",)),
    ("unknown_action_type", _set("moves", "attack", "action_type", value="sneaky"),
     "'moves.attack.action_type'", ("use one of aggressive, defensive, tactical", "'sneaky'")),
    ("missing_required_field", _drop("boss", "max_hp"), "'boss.max_hp'",
     ("missing required field", "hit points at full health")),
    ("missing_phases", _drop("phases"), "'phases'", ("missing required field",)),
    ("target_duration_reversed", _set("difficulty_levels", "easy", "target_duration",
                                      value=[100, 25]),
     "'difficulty_levels.easy.target_duration'", ("give [min, max] seconds with min < max",)),
    ("target_duration_one_value", _set("difficulty_levels", "hard", "target_duration",
                                       value=[60]),
     "'difficulty_levels.hard.target_duration'", ("give [min, max] seconds",)),
    ("target_duration_not_a_list", _set("difficulty_levels", "easy", "target_duration",
                                        value="long"),
     "'difficulty_levels.easy.target_duration'", ("must be a list",)),
    ("out_of_range", _set("moves", "attack", "dodgeability", value=2),
     "'moves.attack.dodgeability'", ("it must be between 0 and 1.5",)),
    ("no_environments", _set("environments", value={}), "'environments'",
     ("define at least one arena",)),
]


@pytest.mark.parametrize(("name", "change", "field", "fix"),
                         [pytest.param(*case, id=case[0]) for case in GAME_ERRORS])
def test_game_error_names_file_field_and_fix(tmp_path: Path, duel: Data, name: str,
                                             change: Callable[[Data], None], field: str,
                                             fix: tuple[str, ...]) -> None:
    data = copy.deepcopy(duel)
    change(data)
    path = write(tmp_path, name, data)
    assert_names(error_of(load_game, path), str(path), field, *fix)


def test_nan_is_out_of_every_range(tmp_path: Path, duel: Data) -> None:
    data = copy.deepcopy(duel)
    data["moves"]["attack"]["damage"] = math.nan
    path = write(tmp_path, "nan_damage", data)
    assert_names(error_of(load_game, path), str(path), "'moves.attack.damage'")


def test_invalid_yaml_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: duel\nmoves: [attack, defend\nphases: {}\n")
    assert_names(error_of(load_game, path), str(path), "not valid YAML", "line",
                 "Fix the syntax")


def test_a_list_at_the_top_level_is_not_a_game(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- attack\n- defend\n")
    assert_names(error_of(load_game, path), str(path), "expected a mapping of fields")


def test_unknown_game_lists_the_available_games(tmp_path: Path) -> None:
    message = error_of(load_game, Path("duell"))
    assert_names(message, "unknown game 'duell'", *envs.available_games(), str(GAME_DIR))
    missing = tmp_path / "nowhere.yaml"
    assert_names(error_of(load_game, missing), str(missing), "no such game file")


def test_game_mapping_errors_name_the_field(duel: Data) -> None:
    data = copy.deepcopy(duel)
    data["moves"]["defend"]["guard"] = 1.5
    with pytest.raises(DefinitionError, match=r"'moves\.defend\.guard' = 1\.5 .* between 0"):
        load_game(data)


# --- personas and populations ----------------------------------------------------------------


def test_unknown_persona_lists_the_available_players() -> None:
    with pytest.raises(DefinitionError) as caught:
        load_players("speedrunner")
    assert_names(str(caught.value), "unknown player 'speedrunner'", *envs.available_players())


@pytest.mark.parametrize(("field", "value", "fix"), [
    ("dodge_skill", 1.5, "it must be between 0 and 1"),
    ("reaction_time", 0.0, "it must be between 0.05 and 2.0"),
    ("equipment_level", 11, "it must be between 0 and 10"),
    ("pattern_learning", -0.1, "it must be between 0 and 1"),
])
def test_persona_parameter_out_of_range(tmp_path: Path, field: str, value: float,
                                        fix: str) -> None:
    data = shipped(PLAYER_DIR / "dodger.yaml")
    data[field] = value
    path = write(tmp_path, f"dodger_{field}", data)
    for load in (load_players, load_persona):
        assert_names(error_of(load, path), str(path), f"'{field}'", fix)


def test_persona_unknown_field_and_wrong_type(tmp_path: Path) -> None:
    data = shipped(PLAYER_DIR / "turtle.yaml")
    data["block_frequncy"] = 0.5
    path = write(tmp_path, "typo", data)
    assert_names(error_of(load_players, path), str(path), "'block_frequncy'",
                 "Allowed fields here", "block_frequency")
    data = shipped(PLAYER_DIR / "turtle.yaml")
    data["aggression"] = True
    path = write(tmp_path, "bool", data)
    assert_names(error_of(load_players, path), str(path), "'aggression'", "must be a float")


@pytest.mark.parametrize("weight", [0, -1.5])
def test_population_member_weight_must_be_positive(tmp_path: Path, weight: float) -> None:
    data = shipped(PLAYER_DIR / "population.yaml")
    data["members"]["turtle"] = weight
    path = write(tmp_path, "population_weight", data)
    assert_names(error_of(load_players, path), str(path), "members.turtle", "use > 0")


def test_population_members_must_not_be_empty(tmp_path: Path) -> None:
    data = shipped(PLAYER_DIR / "population.yaml")
    data["members"] = {}
    path = write(tmp_path, "population_empty", data)
    assert_names(error_of(load_players, path), str(path), "'members'", "at least one persona")


def test_population_with_unknown_member_names_file_and_field(tmp_path: Path) -> None:
    data = shipped(PLAYER_DIR / "population.yaml")
    data["members"]["wizard"] = 1
    path = write(tmp_path, "population_unknown", data)
    message = error_of(load_players, path)
    assert_names(message, "wizard", *envs.available_personas())  # holds today: the fix
    assert_names(message, str(path), "members.wizard")  # fails today: the file and field


def test_population_nan_weight_is_rejected(tmp_path: Path) -> None:
    data = shipped(PLAYER_DIR / "population.yaml")
    data["members"]["novice"] = math.nan
    path = write(tmp_path, "population_nan", data)
    assert_names(error_of(load_players, path), str(path), "members.novice")


# --- what ships --------------------------------------------------------------------------


@pytest.mark.parametrize("name", envs.available_games())
def test_every_shipped_game_loads(name: str) -> None:
    game = load_game(name)
    assert isinstance(game, GameDefinition) and game.name == name
    assert load_game(GAME_DIR / f"{name}.yaml") == game
    vocabulary = game.vocabulary
    assert vocabulary["boss_actions"] == list(game.moves)
    assert set(vocabulary["action_types"]) <= {"aggressive", "defensive", "tactical"}


@pytest.mark.parametrize("name", envs.available_players())
def test_every_shipped_player_loads(name: str) -> None:
    pool = load_players(name)
    assert len(pool.names) >= 1 and pool.weights.sum() == pytest.approx(1.0)
    if name in envs.available_personas():
        persona = load_persona(name)
        assert isinstance(persona, Persona) and pool.names == (name,) == (persona.name,)


def test_duel_vocabulary_is_the_protocol_example() -> None:
    assert load_game("duel").vocabulary == PROTOCOL_VOCABULARY


def test_the_real_games_have_different_vocabularies() -> None:
    duel, dragon = load_game("duel").vocabulary, load_game("dragon_keep").vocabulary
    for key in ("boss_actions", "environments", "difficulty_levels"):
        assert not set(duel[key]) & set(dragon[key]), key


def test_fingerprint_follows_the_content(duel: Data) -> None:
    reference = load_game("duel").fingerprint()
    assert load_game(copy.deepcopy(duel)).fingerprint() == reference  # same content
    assert load_game("dragon_keep").fingerprint() != reference
    changed = copy.deepcopy(duel)
    changed["moves"]["attack"]["damage"] = 13
    assert load_game(changed).fingerprint() != reference
    changed = copy.deepcopy(duel)
    changed["moves"]["special_move"]["parameters"]["area"] = False
    assert load_game(changed).fingerprint() != reference


# --- env arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize("env_class", [BossFightEnv, BossFightVectorEnv])
@pytest.mark.parametrize(("argument", "value", "allowed"), [
    ("objective", "win", ("engagement", "defeat")),
    ("difficulty", "insane", ("easy", "normal", "hard", "None")),
    ("environment", "moon", ("arena", "forest", "cave", "None")),
    ("fights_per_player", 0, (">= 1", "got 0")),
    ("render_mode", "human", ("ansi", "rgb_array")),
])
def test_env_argument_errors_name_the_allowed_values(env_class: type, argument: str,
                                                     value: Any,
                                                     allowed: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match=argument) as caught:
        env_class(game="duel", player="novice", **{argument: value})
    assert_names(str(caught.value), repr(value) if isinstance(value, str) else "", *allowed)


def test_vector_env_needs_at_least_one_env() -> None:
    with pytest.raises(ValueError, match=r"num_envs must be >= 1, got 0"):
        BossFightVectorEnv(num_envs=0)


def test_env_with_unknown_game_or_player_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="Games available"):
        BossFightEnv(game="chess")
    with pytest.raises(ValueError, match="Personas and populations available"):
        BossFightEnv(player="grandmaster")
