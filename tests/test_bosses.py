"""Scripted bosses pick legal moves and behave as documented; the fight runner is exact."""

from __future__ import annotations

import numpy as np
import pytest

from envs.bosses import (
    SCRIPTED_BOSSES,
    BossPolicy,
    ReactiveBoss,
    RotationBoss,
    make_boss,
    masked_argmax,
    masked_sample,
)
from envs.fights import FightResult, StyleSwitch, play_fights
from envs.game import GameDefinition, load_game
from envs.observation import BossState, ObservationLayout, PlayerContext, Situation

DUEL = load_game("duel")
ATTACK, DEFEND, SPECIAL = (DUEL.move_names.index(m) for m in ("attack", "defend", "special_move"))


class FixedMoveBoss:
    """Always the same move when it is legal, otherwise the first legal move."""

    def __init__(self, move: int) -> None:
        self.move = move
        self.name = f"fixed_{move}"

    def select_moves(self, observations: np.ndarray, action_masks: np.ndarray) -> np.ndarray:
        first_legal = action_masks.argmax(axis=1)
        return np.where(action_masks[:, self.move], self.move, first_legal).astype(np.int64)


def random_masks(rng: np.random.Generator, n: int, moves: int) -> np.ndarray:
    masks = rng.random((n, moves)) < 0.4
    masks[np.arange(n), rng.integers(0, moves, n)] = True  # at least one legal move per row
    return masks


def observe(game: GameDefinition = DUEL, *, distance: float = 2.0, last: str | None = None,
            **player: object) -> np.ndarray:
    """One observation row (1, D) for a hand-built situation."""
    situation = Situation(player=PlayerContext(**player),  # type: ignore[arg-type]
                          distance=distance, boss=BossState(last_action=last))
    return ObservationLayout.for_game(game).encode_situation(situation)[None, :]


def all_legal(n: int = 1, moves: int = 3) -> np.ndarray:
    return np.ones((n, moves), dtype=bool)


@pytest.mark.parametrize("game_name", ["duel", "dragon_keep"])
@pytest.mark.parametrize("boss_name", SCRIPTED_BOSSES)
def test_scripted_bosses_only_pick_legal_moves(game_name: str, boss_name: str) -> None:
    game = load_game(game_name)
    boss = make_boss(boss_name, game, seed=3)
    rng = np.random.default_rng(0)
    size, moves = ObservationLayout.for_game(game).size, len(game.moves)
    for _ in range(20):
        masks = random_masks(rng, 64, moves)
        observations = rng.random((64, size), dtype=np.float32)
        chosen = boss.select_moves(observations, masks)
        assert chosen.shape == (64,)
        assert chosen.dtype == np.int64
        assert masks[np.arange(64), chosen].all()


def test_random_boss_covers_every_legal_move_and_follows_its_seed() -> None:
    masks = np.array([[True, False, True]] * 300)
    observations = np.zeros((300, 40), dtype=np.float32)
    picks = make_boss("random", DUEL, seed=1).select_moves(observations, masks)
    assert set(picks.tolist()) == {0, 2}
    again = make_boss("random", DUEL, seed=1).select_moves(observations, masks)
    other = make_boss("random", DUEL, seed=2).select_moves(observations, masks)
    np.testing.assert_array_equal(picks, again)
    assert not np.array_equal(picks, other)


def test_masked_argmax_refuses_a_row_without_legal_moves() -> None:
    masks = np.array([[True, False], [False, False]])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        masked_argmax(np.zeros((2, 2)), masks)


def test_masked_sample_follows_the_probabilities_over_the_legal_moves() -> None:
    probabilities = np.tile([0.5, 0.3, 0.2], (20_000, 1))
    masks = np.tile([True, False, True], (20_000, 1))
    picks = masked_sample(probabilities, masks, np.random.default_rng(0))
    assert picks.dtype == np.int64 and set(np.unique(picks)) == {0, 2}
    # Renormalized over the legal moves: 0.5 / 0.7 and 0.2 / 0.7.
    assert np.mean(picks == 0) == pytest.approx(5 / 7, abs=0.01)
    again = masked_sample(probabilities, masks, np.random.default_rng(0))
    np.testing.assert_array_equal(picks, again)
    # Every legal probability 0: the most likely legal move (here the first legal one).
    zero = masked_sample(np.array([[1.0, 0.0, 0.0]]), np.array([[False, True, True]]),
                         np.random.default_rng(0))
    assert zero.tolist() == [1]
    with pytest.raises(ValueError, match=r"rows \[0\]"):
        masked_sample(probabilities[:1], np.zeros((1, 3), dtype=bool), np.random.default_rng(0))


def test_rotation_reads_the_last_move_from_the_observation() -> None:
    # RotationBoss relies on last_boss_action being the observation's last feature.
    assert ObservationLayout.for_game(DUEL).features[-1].name == "last_boss_action"
    rows = np.vstack([observe(last=None), observe(last="attack"), observe(last="defend"),
                      observe(last="special_move")])
    moves = RotationBoss().select_moves(rows, all_legal(4))
    assert moves.tolist() == [ATTACK, DEFEND, SPECIAL, ATTACK]


def test_rotation_skips_illegal_moves() -> None:
    rows = np.vstack([observe(last="attack"), observe(last="defend")])
    masks = np.array([[True, False, True], [True, True, False]])
    assert RotationBoss().select_moves(rows, masks).tolist() == [SPECIAL, ATTACK]


def test_rotation_boss_repeats_its_cycle_in_a_real_fight() -> None:
    results = play_fights(RotationBoss(), 4, game="duel", player="turtle", series=2)
    counts = np.sum([r.moves_used for r in results], axis=0)
    assert counts[ATTACK] >= counts[DEFEND] >= counts[SPECIAL] > 0


def test_reactive_boss_prefers_hard_to_dodge_moves_against_dodgers() -> None:
    boss = ReactiveBoss(DUEL, seed=0)
    dodger = observe(dodge_frequency=0.95, movement_style="evasive", reaction_time=0.5)
    steady = observe(dodge_frequency=0.0, movement_style="balanced", reaction_time=0.5)
    dodger_scores, steady_scores = boss.scores(dodger)[0], boss.scores(steady)[0]
    assert DUEL.moves["special_move"].dodgeability < DUEL.moves["attack"].dodgeability
    assert (dodger_scores[SPECIAL] - dodger_scores[ATTACK]
            > steady_scores[SPECIAL] - steady_scores[ATTACK] + 0.5)
    picks = boss.select_moves(np.repeat(dodger, 50, axis=0), all_legal(50))
    assert (picks == SPECIAL).all()


def test_reactive_boss_guards_against_aggressive_mashers_only() -> None:
    boss = ReactiveBoss(DUEL, seed=0)
    masher = observe(movement_style="aggressive", frequent_actions=("light_attack",
                     "heavy_attack"), attack_patterns=("button_mash", "combo"))
    turtle = observe(movement_style="defensive", frequent_actions=("block", "heal"))
    assert (boss.select_moves(np.repeat(masher, 50, axis=0), all_legal(50)) == DEFEND).all()
    assert (boss.select_moves(np.repeat(turtle, 50, axis=0), all_legal(50)) != DEFEND).all()


def test_reactive_boss_matches_telegraphs_to_reaction_time() -> None:
    boss = ReactiveBoss(DUEL, seed=0)
    slow = boss.scores(observe(reaction_time=0.8))[0]
    quick = boss.scores(observe(reaction_time=0.25))[0]
    # Special has the longer wind-up: relatively better against the slow player.
    assert slow[SPECIAL] - slow[ATTACK] > quick[SPECIAL] - quick[ATTACK]


def test_reactive_boss_does_not_swing_at_a_player_out_of_reach() -> None:
    boss = ReactiveBoss(DUEL, seed=0)
    near, far = boss.scores(observe(distance=2.0))[0], boss.scores(observe(distance=7.0))[0]
    assert far[ATTACK] < near[ATTACK] - 0.5  # attack reaches 3 m + 1.5 m advance
    no_special = np.array([[True, True, False]] * 50)
    picks = boss.select_moves(np.repeat(observe(distance=7.0), 50, axis=0), no_special)
    assert (picks == DEFEND).all()


def test_reactive_boss_noise_follows_the_seed() -> None:
    # At the edge of the sword's reach, a swing and a guard score within the noise.
    rows = np.repeat(observe(distance=5.5, reaction_time=0.5), 200, axis=0)
    no_special = np.array([[True, True, False]] * 200)
    picks = [ReactiveBoss(DUEL, seed=s).select_moves(rows, no_special) for s in (0, 0, 1)]
    np.testing.assert_array_equal(picks[0], picks[1])
    assert not np.array_equal(picks[0], picks[2])
    assert len(set(picks[0].tolist())) > 1  # not trivially predictable


def test_make_boss_builds_every_scripted_boss_and_names_them_on_error() -> None:
    for name in SCRIPTED_BOSSES:
        boss = make_boss(name, "duel")
        assert isinstance(boss, BossPolicy)
        assert boss.name == name
    with pytest.raises(ValueError, match="random, rotation, reactive"):
        make_boss("berserk", DUEL)


def outcomes(results: list[FightResult]) -> list[tuple[bool, float, tuple[int, ...]]]:
    return [(r.player_won, r.hp_margin, r.moves_used) for r in results]


def test_play_fights_returns_exactly_n_deterministic_results() -> None:
    boss_results = [play_fights(make_boss("random", DUEL, seed=0), 13, game="duel",
                                player="dodger", difficulty="normal", series=4, seed=seed)
                    for seed in (5, 5, 6)]
    assert [len(r) for r in boss_results] == [13, 13, 13]
    assert outcomes(boss_results[0]) == outcomes(boss_results[1])
    assert outcomes(boss_results[0]) != outcomes(boss_results[2])
    for result in boss_results[0]:
        assert result.persona == "dodger"
        assert result.difficulty == "normal"
        assert result.environment in DUEL.environments
        assert result.decisions == sum(result.moves_used) > 0
        assert -1.0 <= result.hp_margin <= 1.0
        assert result.observed.movement_style in ("aggressive", "defensive", "balanced",
                                                  "evasive")


def test_play_fights_numbers_each_players_series_and_switches_style_on_time() -> None:
    results = play_fights(make_boss("random", DUEL, seed=0), 24, game="duel", player="turtle",
                          difficulty="normal", series=4, seed=2,
                          switch=StyleSwitch(after=3, player="dodger"))
    by_player: dict[int, list[FightResult]] = {}
    for result in results:
        by_player.setdefault(result.player, []).append(result)
    assert sorted(by_player) == [0, 1, 2, 3]
    for fights in by_player.values():
        assert [f.series_fight for f in fights] == list(range(6))
        assert [f.persona for f in fights] == ["turtle"] * 3 + ["dodger"] * 3


def test_play_fights_handles_fewer_fights_than_series_and_rejects_bad_counts() -> None:
    assert len(play_fights(RotationBoss(), 2, game="duel", player="novice", series=8)) == 2
    with pytest.raises(ValueError, match="fights"):
        play_fights(RotationBoss(), 0, game="duel", player="novice")
    with pytest.raises(ValueError, match="series"):
        play_fights(RotationBoss(), 3, game="duel", player="novice", series=0)


def test_play_fights_rejects_a_boss_that_picks_illegal_moves() -> None:
    class Cheater:
        name = "cheater"

        def select_moves(self, observations: np.ndarray, masks: np.ndarray) -> np.ndarray:
            return np.full(len(masks), SPECIAL, dtype=np.int64)

    with pytest.raises(ValueError, match="legal move"):
        play_fights(Cheater(), 6, game="duel", player="novice", series=2)


def test_play_fights_reports_progress() -> None:
    seen: list[int] = []
    play_fights(RotationBoss(), 7, game="duel", player="novice", series=3, progress=seen.append)
    assert sum(seen) == 7


KNOWN_ANSWER = load_game("known_answer")
FINISHER = KNOWN_ANSWER.move_names.index("finisher")
TAUNT = KNOWN_ANSWER.move_names.index("taunt")


def known_answer_fights(boss: BossPolicy) -> list[FightResult]:
    return play_fights(boss, 12, game="known_answer", player="novice", objective="defeat",
                       series=4, seed=0)


def test_known_answer_only_the_finisher_wins() -> None:
    finishing = known_answer_fights(FixedMoveBoss(FINISHER))
    assert all(r.boss_won for r in finishing)
    assert all(r.moves_used[FINISHER] == r.decisions for r in finishing)
    stalling = known_answer_fights(FixedMoveBoss(TAUNT))
    assert not any(r.boss_won for r in stalling)
    assert all(r.moves_used[FINISHER] == 0 for r in stalling)


def test_results_report_the_fight_that_ended() -> None:
    # The vector env resets ended rows in the same step: the results must still describe the
    # fight that ended (its length), not the one that just started.
    finishing = known_answer_fights(FixedMoveBoss(FINISHER))
    move = KNOWN_ANSWER.moves["finisher"]
    one_exchange = (move.windup_ticks + move.active_ticks + move.recovery_ticks) / 10
    assert all(r.decisions == 1 for r in finishing)
    assert [r.fight_seconds for r in finishing] == pytest.approx([one_exchange] * 12)
