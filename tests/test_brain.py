"""The served brains (serving.brain) and the bundles they load (serving.bundle)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from envs.game import load_game
from envs.observation import BossState, PlayerContext, Situation
from experiments.benchmark_serving import scripted_bundle
from rag.memory import MemoryConfig
from serving.brain import (
    SCRIPTED_EXPLORATION,
    BundleBrain,
    MemoryBrain,
    ScriptedBrain,
    brain_for,
)
from serving.bundle import (
    MANIFEST_FILE,
    archive_bundle,
    load_bundle,
    read_manifest,
    served_memory_config,
    write_scripted_bundle,
)
from serving.decisions import BossBrain, Decision, Lesson
from tests.bundles import trained_bundle

FORBIDDEN = ("torch", "stable_baselines3", "sb3_contrib", "mlflow", "hydra", "agents",
             "experiments")
"""What a served brain must never import (STYLE.md: the serving layer)."""
DODGER = Situation(PlayerContext(dodge_frequency=0.8, movement_style="evasive",
                                 frequent_actions=("dodge", "light_attack"), reaction_time=0.25),
                   battle_phase="mid_battle", environment="arena", difficulty="normal")
MASHER = Situation(PlayerContext(dodge_frequency=0.05, movement_style="aggressive",
                                 frequent_actions=("heavy_attack",),
                                 attack_patterns=("button_mash", "combo"), reaction_time=0.8),
                   battle_phase="early_battle", environment="cave", difficulty="hard")


@pytest.fixture(scope="module")
def scripted_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_scripted_bundle(tmp_path_factory.mktemp("scripted") / "duel")


@pytest.fixture(scope="module")
def trained_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_bundle(tmp_path_factory.mktemp("trained"))


@pytest.fixture(params=["scripted", "trained"])
def bundle_path(request: pytest.FixtureRequest) -> Path:
    return Path(request.getfixturevalue(f"{request.param}_path"))


def random_situations(n: int, seed: int = 0, phases: tuple[str, ...] = (
        "early_battle", "mid_battle", "late_battle")) -> list[Situation]:
    rng = np.random.default_rng(seed)
    styles = ("aggressive", "defensive", "balanced", "evasive")
    return [Situation(
        PlayerContext(dodge_frequency=float(rng.random()), movement_style=str(rng.choice(styles)),
                      reaction_time=float(rng.uniform(0.1, 1.0)),
                      health_percentage=float(rng.random()),
                      frequent_actions=("light_attack",) if rng.random() < 0.5 else ("dodge",),
                      recent_deaths=int(rng.integers(0, 4)),
                      equipment_level=int(rng.integers(0, 10))),
        boss_health_percentage=float(rng.random()), battle_phase=str(rng.choice(phases)),
        distance=float(rng.uniform(0, 12)), environment=None)
        for _ in range(n)]


def move_counts(brain: BossBrain, situation: Situation, n: int) -> Counter[str]:
    return Counter(brain.decide(situation).move for _ in range(n))


# --- bundles ------------------------------------------------------------------------------


def test_scripted_bundle_loads_from_its_directory_and_its_archive(scripted_path: Path) -> None:
    bundle = load_bundle(scripted_path)
    manifest = bundle.manifest
    assert (manifest.name, manifest.policy_version) == ("boss-duel", "scripted-reactive")
    assert manifest.policy.kind == "scripted" and manifest.policy.file is None
    assert manifest.game_fingerprint == load_game("duel").fingerprint()
    assert manifest.vocabulary["boss_actions"] == ["attack", "defend", "special_move"]
    assert manifest.vocabulary["battle_phases"] == ["early_battle", "mid_battle", "late_battle"]
    assert manifest.move_types == {"attack": "aggressive", "defend": "defensive",
                                   "special_move": "tactical"}
    assert manifest.observation["size"] == len(manifest.observation["names"]) == 43
    assert bundle.memory_size == 0 and bundle.game == load_game("duel")
    archived = load_bundle(archive_bundle(scripted_path))
    assert archived.manifest == manifest and archived.path != bundle.path


def test_a_bundle_serves_its_boss_actions_in_any_order(scripted_path: Path) -> None:
    bundle = load_bundle(scripted_path)
    assert bundle.serves(["special_move", "attack", "defend"])
    assert not bundle.serves(["attack", "defend"])
    assert not bundle.serves(["attack", "defend", "fireball"])


def test_scripted_bundles_for_every_game_and_boss(tmp_path: Path) -> None:
    for game in ("duel", "dragon_keep"):
        for boss in ("random", "rotation", "reactive"):
            brain = load_bundle(write_scripted_bundle(tmp_path / f"{game}-{boss}", game,
                                                      boss)).new_brain()
            assert isinstance(brain, ScriptedBrain) and brain.policy_version == f"scripted-{boss}"
            assert brain.decide(DODGER).move in load_game(game).moves
    with pytest.raises(ValueError, match=r"unknown scripted boss 'smart'.*reactive"):
        write_scripted_bundle(tmp_path / "x", boss="smart")
    with pytest.raises(ValueError, match=r"exists.*never overwritten"):
        write_scripted_bundle(tmp_path / "duel-random")
    (tmp_path / "empty").mkdir()
    assert load_bundle(write_scripted_bundle(tmp_path / "empty")).manifest.name == "boss-duel"


def test_each_brain_gets_its_own_copy_of_the_memory(bundle_path: Path) -> None:
    bundle = load_bundle(bundle_path)
    first, second = bundle.new_brain(), bundle.new_brain()
    first.learn(Lesson(DODGER, "attack", 0.0, "s1"))
    assert (first.memory_size(), second.memory_size(), bundle.memory_size) == (1, 0, 0)


def test_a_server_indexes_the_memory_for_its_capacity() -> None:
    bundle_config = MemoryConfig(dim=32, moves=3, capacity=20_000)
    assert served_memory_config(bundle_config, "bundle") is bundle_config
    assert served_memory_config(replace(bundle_config, index="hnsw"), "exact").index == "exact"
    ivf = served_memory_config(bundle_config, "ivf")
    assert (ivf.index, ivf.ivf_nlist, ivf.ivf_nprobe, ivf.train_size) == ("ivf", 82, 8, 3198)
    assert ivf.ivf_train_in_background  # a server's decisions never wait for k-means
    small = served_memory_config(replace(bundle_config, capacity=30), "ivf")
    assert (small.ivf_nlist, small.ivf_nprobe) == (8, 8)
    large = served_memory_config(replace(bundle_config, capacity=3_000_000), "ivf")
    assert (large.ivf_nlist, large.ivf_nprobe) == (1000, 100)


def test_an_ivf_memory_decides_as_the_bundle_s_exact_one_until_its_lists_train(
        bundle_path: Path) -> None:
    bundle = load_bundle(bundle_path)
    exact, ivf = bundle.new_brain(seed=3), bundle.new_brain(seed=3, memory_index="ivf")
    assert isinstance(exact, MemoryBrain) and isinstance(ivf, MemoryBrain)
    assert (exact.reader.memory.config.index, ivf.reader.memory.config.index) == ("exact", "ivf")
    situations = random_situations(30, seed=4)
    for brain in (exact, ivf):
        for i, situation in enumerate(situations[:20]):
            brain.learn(Lesson(situation, brain.boss_actions[i % 3], (i % 5) / 4, "s1"))
    for situation in situations:
        assert ivf.decide(situation) == exact.decide(situation)


def test_a_full_served_memory_trains_its_lists_and_finds_what_it_stored(tmp_path: Path) -> None:
    bundle = load_bundle(scripted_bundle(tmp_path / "learnt", 12_000))
    brain = bundle.new_brain(memory_index="ivf")
    assert isinstance(brain, MemoryBrain)
    memory = brain.reader.memory
    assert len(memory) == 12_000 and memory.config.train_size < 12_000 / 3
    assert all(type(index.faiss_index).__name__ == "IndexIVFFlat"  # trained as it was built
               for index in memory._indexes)
    stored = memory.records()
    found = memory.search_any(stored.keys[::600], k=1)
    assert (found.distances[:, 0] == 0).all()  # each stored key is its own nearest entry


# --- deciding -----------------------------------------------------------------------------


def check_decision(decision: Decision, brain: BossBrain, situation: Situation) -> None:
    assert decision.move in brain.boss_actions
    assert 0.0 < decision.confidence <= 1.0
    assert isinstance(decision.retrieved, int) and decision.retrieved >= 0
    assert json.loads(json.dumps(dict(decision.parameters)))["damage"] >= 0
    for key in ("reach", "windup_ticks", "recovery_ticks", "cooldown", "stamina_cost"):
        assert key in decision.parameters


def test_brains_decide_legal_moves_with_valid_fields(bundle_path: Path) -> None:
    bundle = load_bundle(bundle_path)
    brain = bundle.new_brain()
    assert isinstance(brain, BossBrain)
    assert isinstance(brain, BundleBrain if bundle.manifest.policy.kind != "scripted"
                      else ScriptedBrain)
    game = bundle.game
    for situation in random_situations(200):
        decision = brain.decide(situation)
        check_decision(decision, brain, situation)
        assert decision.action_type == game.moves[decision.move].action_type
        assert decision.parameters["damage"] == game.moves[decision.move].damage


def test_the_scripted_boss_s_choice_dominates_and_its_parameters_are_the_game_s() -> None:
    brain = ScriptedBrain("duel", "reactive")
    decision = brain.decide(DODGER)
    assert decision.parameters["animation"] in ("sword_swing", "shield_up", "ground_slam")
    decisions = [brain.decide(DODGER) for _ in range(300)]
    favourite, count = Counter(d.move for d in decisions).most_common(1)[0]
    share = 1 - SCRIPTED_EXPLORATION + SCRIPTED_EXPLORATION / 3  # with an empty memory
    assert count > 0.75 * 300
    assert {round(d.confidence, 9) for d in decisions if d.move == favourite} == {
        round(share, 9)}
    assert all(d.retrieved == 0 for d in decisions)


def test_phases_are_the_game_s_or_the_protocol_s_mapped_by_order() -> None:
    brain = ScriptedBrain("dragon_keep", "random", seed=1)
    game = load_game("dragon_keep")
    grounded, skyborne, desperate = (set(p.moves) for p in game.phases)
    protocol = {"early_battle": grounded, "mid_battle": skyborne, "late_battle": desperate,
                "grounded": grounded, "desperate": desperate}
    for phase, allowed in protocol.items():
        seen = {brain.decide(Situation(PlayerContext(), battle_phase=phase)).move
                for _ in range(150)}
        assert seen <= allowed and len(seen) >= len(allowed) - 1, (phase, seen)
    with pytest.raises(ValueError, match=r"unknown battle_phase 'endgame'.*grounded, skyborne, "
                                         r"desperate.*early_battle"):
        brain.decide(Situation(PlayerContext(), battle_phase="endgame"))


def test_moves_on_cooldown_or_too_expensive_are_not_chosen() -> None:
    brain = ScriptedBrain("duel", "random")
    cooling = BossState(cooldowns=(0.0, 0.0, 0.5))
    tired = BossState(stamina=0.2)  # special_move costs 40 of 100
    for state in (cooling, tired):
        moves = move_counts(brain, Situation(PlayerContext(), boss=state), 200)
        assert "special_move" not in moves and set(moves) == {"attack", "defend"}
    with pytest.raises(ValueError, match=r"cooldowns have 2 entries; this game has 3 moves"):
        brain.decide(Situation(PlayerContext(), boss=BossState(cooldowns=(0.0, 0.0))))


def test_a_trained_brain_samples_with_its_seed(trained_path: Path) -> None:
    bundle = load_bundle(trained_path)
    runs = [[bundle.new_brain(seed=3).decide(s).move for s in random_situations(50)]
            for _ in range(2)]
    assert runs[0] == runs[1]
    other = [bundle.new_brain(seed=4).decide(s).move for s in random_situations(50)]
    assert other != runs[0]
    assert len(move_counts(bundle.new_brain(), DODGER, 300)) >= 2  # a draw, not an argmax


# --- learning -----------------------------------------------------------------------------


@pytest.mark.parametrize("situation", [DODGER, MASHER], ids=["dodger", "masher"])
def test_a_move_that_keeps_failing_is_chosen_less_in_that_context(
        bundle_path: Path, situation: Situation) -> None:
    bundle = load_bundle(bundle_path)
    fresh = bundle.new_brain(seed=7)
    before = [fresh.decide(situation) for _ in range(400)]
    favourite, count = Counter(d.move for d in before).most_common(1)[0]
    learner = bundle.new_brain(seed=7)
    sizes = [learner.learn(Lesson(situation, favourite, 0.0, "session-1")) for _ in range(8)]
    assert sizes == list(range(1, 9)) and learner.memory_size() == 8
    after = [learner.decide(situation) for _ in range(400)]
    assert Counter(d.move for d in after)[favourite] <= 0.9 * count
    # The move's probability (the confidence when it is chosen) falls: scripted 0.87 -> 0.76,
    # an actor-critic's is halved (lam = 0.5 against memories worth 0).
    confidence = {name: max(d.confidence for d in run if d.move == favourite)
                  for name, run in (("before", before), ("after", after))}
    assert confidence["after"] < confidence["before"] - 0.05, confidence
    assert all(d.retrieved >= 8 for d in after)  # the failures informed every decision


def test_a_move_that_keeps_working_is_chosen_more(bundle_path: Path) -> None:
    bundle = load_bundle(bundle_path)
    before = move_counts(bundle.new_brain(seed=2), DODGER, 400)
    rare = min(bundle.manifest.vocabulary["boss_actions"], key=lambda m: before[m])
    learner = bundle.new_brain(seed=2)
    for _ in range(8):
        learner.learn(Lesson(DODGER, rare, 1.0, "session-2"))
    assert move_counts(learner, DODGER, 400)[rare] > before[rare] + 20


def test_deciding_together_is_deciding_one_by_one(bundle_path: Path) -> None:
    bundle = load_bundle(bundle_path)
    situations = random_situations(40, seed=11)
    alone, together = brain_for(bundle, seed=5), brain_for(bundle, seed=5)
    for brain in (alone, together):  # memories to blend in, the same for both
        for i, situation in enumerate(situations[:20]):
            brain.learn(Lesson(situation, brain.boss_actions[i % 3], (i % 5) / 4, "s1"))
    one_by_one = [alone.decide_keyed(situation) for situation in situations]
    batched = together.decide_many(situations[:15]) + together.decide_many(situations[15:])
    for (decision, key), (expected, expected_key) in zip(batched, one_by_one, strict=True):
        assert decision.move == expected.move and decision.retrieved == expected.retrieved
        assert decision.confidence == pytest.approx(expected.confidence)
        np.testing.assert_allclose(key, expected_key, rtol=1e-6)
    np.testing.assert_allclose(together.key_of(situations[3]), one_by_one[3][1], rtol=1e-6)


def test_learning_by_keys_is_learning_lessons(scripted_path: Path) -> None:
    bundle = load_bundle(scripted_path)
    by_lessons, by_keys = brain_for(bundle, seed=1), brain_for(bundle, seed=1)
    situations = random_situations(12, seed=2)
    lessons = [Lesson(s, ("attack", "defend", "special_move")[i % 3], (i % 4) / 3, f"s{i % 2}")
               for i, s in enumerate(situations)]
    sizes = [by_lessons.learn(lesson) for lesson in lessons]
    keys = [by_keys.decide_keyed(s)[1] for s in situations]
    size = by_keys.learn_keyed(keys, [lesson.move for lesson in lessons],
                               [lesson.value for lesson in lessons],
                               [lesson.session_id for lesson in lessons])
    assert size == sizes[-1] == 12
    probe = random_situations(30, seed=3)
    assert ([d.move for d, _ in brain_for(bundle, seed=9).decide_many(probe)]
            != [d.move for d, _ in by_keys.decide_many(probe)]), "the lessons changed nothing"
    first, second = by_lessons.reader.memory.records(), by_keys.reader.memory.records()
    np.testing.assert_allclose(first.keys, second.keys, rtol=1e-6)
    assert list(first.moves) == list(second.moves)
    np.testing.assert_allclose(first.values, second.values)
    with pytest.raises(ValueError, match="unknown move"):
        by_keys.learn_keyed(keys[:2], ["attack", "fireball"], [0.5, 0.5], ["s", "s"])
    assert by_keys.memory_size() == 12, "a bad lesson stores none of its batch"


def test_lessons_must_name_a_move_and_an_effectiveness(scripted_path: Path) -> None:
    brain = load_bundle(scripted_path).new_brain()
    with pytest.raises(ValueError, match=r"unknown move 'fireball'.*attack, defend"):
        brain.learn(Lesson(DODGER, "fireball", 0.5, "s"))
    with pytest.raises(ValueError, match=r"effectiveness in 0..1"):
        brain.learn(Lesson(DODGER, "attack", 1.5, "s"))
    assert brain.memory_size() == 0


def test_decide_from_threads_while_learn_runs(bundle_path: Path) -> None:
    brain = load_bundle(bundle_path).new_brain()
    situations = random_situations(100, seed=5)
    errors: list[BaseException] = []
    decisions: list[Decision] = []
    lock = threading.Lock()

    def guarded(work: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as error:
                errors.append(error)
        return run

    def decide() -> None:
        for situation in situations * 3:
            decision = brain.decide(situation)
            with lock:
                decisions.append(decision)

    def learn() -> None:
        for i, situation in enumerate(situations * 3):
            brain.learn(Lesson(situation, brain.boss_actions[i % 3], (i % 5) / 4, f"s{i % 7}"))

    threads = [threading.Thread(target=guarded(decide)) for _ in range(3)]
    threads.append(threading.Thread(target=guarded(learn)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(decisions) == 900 and brain.memory_size() == 300
    assert all(d.move in brain.boss_actions and 0 < d.confidence <= 1 for d in decisions)


# --- malformed bundles --------------------------------------------------------------------


def edited_bundle(source: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], Any]) -> Path:
    copy = tmp_path / "edited"
    shutil.copytree(source, copy)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    edit(manifest)
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    return copy


MALFORMED: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "missing policy": (lambda m: m.pop("policy"), r"field 'policy' is missing"),
    "future format": (lambda m: m.update(format_version=2),
                      r"'format_version' is 2.*upgrade the server"),
    "unknown kind": (lambda m: m["policy"].update(kind="transformer"),
                     r"'policy.kind' is 'transformer'.*actor_critic, q_values, scripted"),
    "text embedder": (lambda m: m["retrieval"]["embedder"].update(kind="openai"),
                      r"'retrieval.embedder.kind' is 'openai'.*numeric embedder only.*Fix: "
                      r"export from a run trained with rag.embedder.kind=numeric"),
    "reversed range": (lambda m: m["retrieval"].update(value_range=[1.0, 0.0]),
                       r"'retrieval.value_range' is \[1.0, 0.0\].*lo < hi"),
    "lam too big": (lambda m: m["retrieval"].update(lam=2), r"'retrieval.lam' is 2.0"),
    "k as text": (lambda m: m["retrieval"].update(k="eight"),
                  r"'retrieval.k' must be an integer"),
    "edited game": (lambda m: m["game"]["boss"].update(max_hp=9999),
                    r"'game_fingerprint'.*edited after export"),
    "invalid game": (lambda m: m["game"]["moves"]["attack"].update(action_type="sneaky"),
                     r"'game' is not a valid game definition.*action_type"),
    "layout drift": (lambda m: m["observation"].update(size=40),
                     r"'observation.size' is 40.*layout changed"),
    "edited vocabulary": (lambda m: m["vocabulary"].update(boss_actions=["attack"]),
                          r"'vocabulary' does not match the manifest's game"),
    "unknown scripted boss": (lambda m: m["policy"].update(scripted="dragon"),
                              r"'policy.scripted' is 'dragon'.*random, rotation, reactive"),
    "bad metrics": (lambda m: m.update(metrics={"score": "high"}),
                    r"'metrics' must map names to numbers"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_manifests_fail_naming_the_field_and_the_fix(
        scripted_path: Path, tmp_path: Path, case: str) -> None:
    edit, message = MALFORMED[case]
    path = edited_bundle(scripted_path, tmp_path, edit)
    with pytest.raises(ValueError, match=message) as error:
        load_bundle(path)
    assert "Fix" in str(error.value) and MANIFEST_FILE in str(error.value)


def test_broken_bundle_files_fail_with_the_fix(trained_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no such bundle"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no manifest.*experiments.export"):
        load_bundle(tmp_path / "empty")
    not_json = edited_bundle(trained_path, tmp_path, lambda m: None)
    (not_json / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=r"not valid JSON"):
        read_manifest(not_json)
    shutil.rmtree(not_json)
    no_policy = edited_bundle(trained_path, tmp_path, lambda m: None)
    (no_policy / "policy.onnx").unlink()
    with pytest.raises(ValueError, match=r"policy.file 'policy.onnx' is missing.*export"):
        load_bundle(no_policy)
    shutil.rmtree(no_policy)
    corrupt = edited_bundle(trained_path, tmp_path, lambda m: None)
    (corrupt / "policy.onnx").write_bytes(b"not a network")
    with pytest.raises(ValueError, match=r"policy.onnx is not a loadable ONNX model.*export"):
        load_bundle(corrupt).new_brain()
    shutil.rmtree(corrupt)
    wide = edited_bundle(trained_path, tmp_path, lambda m: m["policy"].update(input_size=52))
    with pytest.raises(ValueError, match=r"'policy.input_size' is 52.*43 elements"):
        load_bundle(wide)
    shutil.rmtree(wide)
    no_memory = edited_bundle(trained_path, tmp_path, lambda m: None)
    shutil.rmtree(no_memory / "memory")
    with pytest.raises(ValueError, match=r"'retrieval.memory'.*cannot be read"):
        load_bundle(no_memory)
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match=r"not a readable .tar.gz archive"):
        load_bundle(tmp_path / "junk.tar.gz")


def test_a_scripted_bundle_has_no_network_for_a_bundle_brain(scripted_path: Path) -> None:
    with pytest.raises(ValueError, match=r"scripted bundle has no network.*new_brain"):
        BundleBrain(load_bundle(scripted_path))


# --- the serving layer's dependencies -----------------------------------------------------


def test_serving_brains_import_no_torch_sb3_mlflow_hydra_agents_or_experiments(
        trained_path: Path, scripted_path: Path) -> None:
    script = f"""
import sys
from envs.observation import PlayerContext, Situation
from serving.bundle import load_bundle
for path in ({str(trained_path)!r}, {str(scripted_path)!r}):
    load_bundle(path).new_brain().decide(Situation(PlayerContext()))
print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r})))
"""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
