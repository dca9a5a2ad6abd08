"""The policy bundle: what ``python -m experiments.export`` writes and the server loads.

A bundle is a directory (or a ``.tar.gz`` archive of one) that a game team can serve without
torch, SB3, MLflow or Hydra: this module imports numpy, json, ``envs`` and ``rag`` only.

==================  =========================================================================
file                what it is
==================  =========================================================================
``manifest.json``   :class:`Manifest`: the game definition and vocabulary, the observation
                    layout, the policy, the memory's blending parameters, where it came from
``policy.onnx``     the policy network (input ``observation`` float32 (batch, input_size);
                    output ``scores``: logits for ``actor_critic``, Q-values for ``q_values``;
                    actor-critics also output ``value``); absent for ``scripted`` policies
``memory/``         the episodic memory snapshot (``rag.memory.EpisodicMemory.save``)
``MODEL_CARD.md``   for people: what it was trained against, evaluation, calibration
==================  =========================================================================

``manifest.json`` (``format_version`` 1):

- ``name`` (``boss-duel``), ``policy_version`` (``boss-duel/v3-1a2b3c4d``,
  ``scripted-reactive``): what the server reports as ``policy_version``.
- ``game``: the game definition as a mapping (``envs.game.load_game(manifest.game)``
  rebuilds it), ``game_fingerprint`` its ``GameDefinition.fingerprint()``.
- ``vocabulary``: ``boss_actions``, ``action_types``, ``environments``,
  ``difficulty_levels`` (what a game registers, ../shared/PROTOCOL.md) and ``battle_phases``
  (the game's phase names); ``move_types``: move -> action type.
- ``observation``: ``size``, ``names`` (one per element,
  ``envs.observation.ObservationLayout.names()``) and ``value_scales`` (the normalisation:
  ``envs.observation.VALUE_SCALES``; blocks and one-hots are already in [0, 1]). Loading
  fails when the installed ``envs`` encodes differently: the policy would see other numbers.
- ``policy`` (:class:`PolicySpec`), ``retrieval`` (:class:`RetrievalSpec`), ``source``
  (:class:`SourceSpec`), ``metrics`` (name -> float, e.g. ``eval/score``).

:func:`read_manifest` validates every field and raises ``ValueError`` naming the field and
the fix; :func:`load_bundle` also checks the files and the memory against the manifest.
:func:`write_scripted_bundle` writes a bundle without any training (a scripted boss and an
empty memory), for development and tests.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from envs.bosses import SCRIPTED_BOSSES
from envs.game import GameDefinition, load_game
from envs.observation import VALUE_SCALES, ObservationLayout
from envs.schema import DefinitionError
from rag.embedders import NumericContextEmbedder
from rag.memory import EpisodicMemory, MemoryConfig
from rag.retrieval import DEFAULT_DELTA, DEFAULT_DISTANCE_SCALE

if TYPE_CHECKING:
    from serving.decisions import BossBrain

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
POLICY_FILE = "policy.onnx"
MEMORY_DIR = "memory"
MODEL_CARD_FILE = "MODEL_CARD.md"
ARCHIVE_SUFFIX = ".tar.gz"
POLICY_KINDS = ("actor_critic", "q_values", "scripted")
"""``actor_critic``: ONNX logits (and value); ``q_values``: ONNX Q-values; ``scripted``: a
scripted boss of ``envs.bosses`` by name, no network."""
RETRIEVAL_MODES = ("none", "episodic", "blend", "memory_only")
"""How the policy was trained to use the memory (the ``rag.mode`` of its run)."""
FEATURES_PER_MOVE = 3
"""Retrieval features appended per move when ``policy.retrieval_inputs`` (value, count / k,
squashed distance), as ``agents.retrieval`` appends them."""
SERVABLE_EMBEDDERS = ("numeric",)
DEFAULT_CAPACITY = 20_000
ServedIndex = Literal["bundle", "exact", "ivf"]
"""How a server indexes each game's memory: :func:`served_memory_config`."""


@dataclass(frozen=True)
class PolicySpec:
    """The policy network (or scripted boss) of a bundle."""

    kind: str
    """One of POLICY_KINDS."""
    file: str | None
    """The ONNX file in the bundle (``policy.onnx``); None for ``scripted``."""
    scripted: str | None
    """The scripted boss's name (``envs.bosses.SCRIPTED_BOSSES``) for ``scripted``, else None."""
    input_size: int
    """Width of the network's input: the observation, plus 3 per move with retrieval inputs."""
    retrieval_inputs: bool = False
    """Whether the network reads retrieval features appended to the observation (rag=episodic)."""


@dataclass(frozen=True)
class RetrievalSpec:
    """How the episodic memory is read, blended with the policy, and written."""

    mode: str = "none"
    """The run's ``rag.mode`` (RETRIEVAL_MODES); the memory adapts served choices in every mode."""
    k: int = 8
    """Neighbours read per move."""
    lam: float = 0.5
    """EVA's lambda for ``rag.retrieval.blend_values`` (1 ignores the memory)."""
    delta: float = DEFAULT_DELTA
    """Kernel offset (``rag.retrieval.kernel_weights``)."""
    distance_scale: float = DEFAULT_DISTANCE_SCALE
    """Mean squared distance that squashes to 0.5 (``rag.retrieval.retrieval_features``)."""
    value_clip: float = 10.0
    """Retrieval inputs: the value feature is clipped to +-value_clip (as in training)."""
    embedder: Mapping[str, Any] = field(default_factory=lambda: {"kind": "numeric"})
    """``kind`` (numeric: the only kind served), ``feature_weights``, ``name``, ``dim``."""
    memory: str = MEMORY_DIR
    """The memory snapshot's directory in the bundle."""
    value_range: tuple[float, float] = (0.0, 1.0)
    """[lo, hi]: an outcome's effectiveness 0..1 is stored as ``lo + e * (hi - lo)``, and
    memory values (and Q-values) read as ``(v - lo) / (hi - lo)``, clipped to 0..1."""


@dataclass(frozen=True)
class SourceSpec:
    """Where the policy came from."""

    run_id: str | None = None
    experiment: str | None = None
    git_commit: str | None = None
    created_at: str = ""
    """ISO 8601 UTC time of the export."""


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` of a bundle (see the module docstring)."""

    name: str
    policy_version: str
    game: Mapping[str, Any]
    game_fingerprint: str
    vocabulary: Mapping[str, list[str]]
    move_types: Mapping[str, str]
    observation: Mapping[str, Any]
    policy: PolicySpec
    retrieval: RetrievalSpec
    source: SourceSpec
    metrics: Mapping[str, float] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        """The manifest as JSON-able data (what :func:`write_manifest` writes)."""
        data = dataclasses.asdict(self)
        data["retrieval"]["value_range"] = list(self.retrieval.value_range)
        return json.loads(json.dumps(data))


def manifest_for(game: GameDefinition, *, name: str, policy_version: str, policy: PolicySpec,
                 retrieval: RetrievalSpec | None = None, source: SourceSpec | None = None,
                 metrics: Mapping[str, float] | None = None) -> Manifest:
    """A manifest whose game, vocabulary and observation fields are computed from ``game``."""
    layout = ObservationLayout.for_game(game)
    return Manifest(
        name=name,
        policy_version=policy_version,
        game=json.loads(json.dumps(dataclasses.asdict(game))),
        game_fingerprint=game.fingerprint(),
        vocabulary=vocabulary_of(game),
        move_types={move: spec.action_type for move, spec in game.moves.items()},
        observation=observation_of(layout),
        policy=policy,
        retrieval=retrieval or RetrievalSpec(),
        source=source or SourceSpec(created_at=now_iso()),
        metrics={key: float(value) for key, value in (metrics or {}).items()},
    )


def vocabulary_of(game: GameDefinition) -> dict[str, list[str]]:
    """The protocol's vocabulary of ``game`` plus its ``battle_phases``."""
    return {**game.vocabulary, "battle_phases": [phase.name for phase in game.phases]}


def observation_of(layout: ObservationLayout) -> dict[str, Any]:
    return {"size": layout.size, "names": layout.names(), "value_scales": dict(VALUE_SCALES)}


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


# ---------------------------------------------------------------------------- reading


def write_manifest(manifest: Manifest, directory: str | os.PathLike[str]) -> Path:
    """Write ``manifest.json`` into ``directory`` (created if needed); returns its path."""
    path = Path(directory) / MANIFEST_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    return path


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate a manifest (a ``manifest.json`` or the bundle directory holding it).

    Raises ValueError naming the field that is wrong and how to fix it.
    """
    file = Path(path)
    if file.is_dir():
        file = file / MANIFEST_FILE
    if not file.is_file():
        raise ValueError(f"{file}: no manifest. A bundle is a directory holding {MANIFEST_FILE} "
                         f"(write one with python -m experiments.export, or "
                         f"serving.bundle.write_scripted_bundle).")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}: not valid JSON ({error}). Re-export the bundle.") from error
    return _ManifestReader(str(file)).manifest(data)


class _ManifestReader:
    """Validates manifest data field by field; every error names the file and the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str, fix: str) -> ValueError:
        return ValueError(f"{self.source}: field {where!r} {problem}. Fix: {fix}.")

    def require(self, data: Mapping[str, Any], key: str, kind: type | tuple[type, ...],
                where: str = "") -> Any:
        path = f"{where}.{key}" if where else key
        if key not in data:
            raise self.fail(path, "is missing", "re-export the bundle with "
                            "python -m experiments.export (or write_scripted_bundle)")
        value = data[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _tuple(kind)):
            raise self.fail(path, f"must be {_kind_name(kind)}, not {value!r}",
                            "re-export the bundle, or correct the value by hand")
        return value

    def manifest(self, data: Any) -> Manifest:
        if not isinstance(data, Mapping):
            raise self.fail("(top level)", "must be a JSON object", "re-export the bundle")
        version = self.require(data, "format_version", int)
        if version != FORMAT_VERSION:
            raise self.fail("format_version", f"is {version}; this server reads version "
                            f"{FORMAT_VERSION}", "export the bundle with the same version of "
                            "bosslab as the server, or upgrade the server")
        game = self.game(data)
        layout = ObservationLayout.for_game(game)
        self.check_derived(data, game, layout)
        retrieval = self.retrieval(self.require(data, "retrieval", Mapping), layout)
        return Manifest(
            name=self.require(data, "name", str),
            policy_version=self.require(data, "policy_version", str),
            game=dict(data["game"]),
            game_fingerprint=data["game_fingerprint"],
            vocabulary={k: list(v) for k, v in data["vocabulary"].items()},
            move_types=dict(data["move_types"]),
            observation=dict(data["observation"]),
            policy=self.policy(self.require(data, "policy", Mapping), layout, retrieval),
            retrieval=retrieval,
            source=self.source_spec(self.require(data, "source", Mapping)),
            metrics=self.metrics(data.get("metrics", {})),
        )

    def game(self, data: Mapping[str, Any]) -> GameDefinition:
        mapping = self.require(data, "game", Mapping)
        try:
            game = load_game(mapping)
        except DefinitionError as error:
            raise self.fail("game", f"is not a valid game definition ({error})",
                            "export the bundle again from a run on a valid game") from error
        fingerprint = self.require(data, "game_fingerprint", str)
        if fingerprint != game.fingerprint():
            raise self.fail("game_fingerprint", f"is {fingerprint} but the manifest's game "
                            f"hashes to {game.fingerprint()}: the game was edited after export",
                            "export the bundle again instead of editing manifest.json")
        return game

    def check_derived(self, data: Mapping[str, Any], game: GameDefinition,
                      layout: ObservationLayout) -> None:
        """vocabulary, move_types and observation must be what the game implies."""
        expected = {"vocabulary": vocabulary_of(game),
                    "move_types": {m: s.action_type for m, s in game.moves.items()}}
        for key, value in expected.items():
            if self.require(data, key, Mapping) != value:
                raise self.fail(key, f"does not match the manifest's game (expected {value})",
                                "export the bundle again instead of editing manifest.json")
        observation = self.require(data, "observation", Mapping)
        actual = observation_of(layout)
        for key in ("size", "names", "value_scales"):
            if observation.get(key) != actual[key]:
                raise self.fail(f"observation.{key}", f"is {observation.get(key)!r} but this "
                                f"server's envs encodes {actual[key]!r}: the observation "
                                f"layout changed since the export",
                                "export the bundle again with this version of bosslab, or "
                                "serve it with the version that exported it")

    def policy(self, data: Mapping[str, Any], layout: ObservationLayout,
               retrieval: RetrievalSpec) -> PolicySpec:
        kind = self.require(data, "kind", str, "policy")
        if kind not in POLICY_KINDS:
            raise self.fail("policy.kind", f"is {kind!r}", f"use one of {', '.join(POLICY_KINDS)}")
        spec = PolicySpec(
            kind=kind, file=data.get("file"), scripted=data.get("scripted"),
            input_size=self.require(data, "input_size", int, "policy"),
            retrieval_inputs=self.require(data, "retrieval_inputs", bool, "policy"))
        if kind == "scripted":
            if spec.scripted not in SCRIPTED_BOSSES:
                raise self.fail("policy.scripted", f"is {spec.scripted!r}",
                                f"name a scripted boss: {', '.join(SCRIPTED_BOSSES)}")
        elif not isinstance(spec.file, str) or not spec.file:
            raise self.fail("policy.file", f"is {spec.file!r} for a {kind} policy",
                            f"name the ONNX file in the bundle ({POLICY_FILE})")
        expected = layout.size + (FEATURES_PER_MOVE * len(layout.moves)
                                  if spec.retrieval_inputs else 0)
        if spec.input_size != expected:
            raise self.fail("policy.input_size", f"is {spec.input_size}, but this game's "
                            f"observation{' with retrieval inputs' * spec.retrieval_inputs} "
                            f"has {expected} elements", "export the bundle again")
        if spec.retrieval_inputs and retrieval.mode != "episodic":
            raise self.fail("policy.retrieval_inputs", f"is true with retrieval.mode "
                            f"{retrieval.mode!r}", "retrieval inputs come from rag=episodic "
                            "runs: set mode to episodic or retrieval_inputs to false")
        return spec

    def retrieval(self, data: Mapping[str, Any], layout: ObservationLayout) -> RetrievalSpec:
        where = "retrieval"
        mode = self.require(data, "mode", str, where)
        if mode not in RETRIEVAL_MODES:
            raise self.fail("retrieval.mode", f"is {mode!r}",
                            f"use one of {', '.join(RETRIEVAL_MODES)}")
        k = self.require(data, "k", int, where)
        numbers = {name: float(self.require(data, name, (int, float), where))
                   for name in ("lam", "delta", "distance_scale", "value_clip")}
        self.check_numbers(k, numbers)
        value_range = self.value_range(self.require(data, "value_range", list, where))
        embedder = self.embedder(self.require(data, "embedder", Mapping, where), layout)
        return RetrievalSpec(mode=mode, k=k, embedder=embedder, value_range=value_range,
                             memory=self.require(data, "memory", str, where), **numbers)

    def check_numbers(self, k: int, numbers: Mapping[str, float]) -> None:
        if k < 1:
            raise self.fail("retrieval.k", f"is {k}", "use an int >= 1, e.g. 8")
        if not 0.0 <= numbers["lam"] <= 1.0:
            raise self.fail("retrieval.lam", f"is {numbers['lam']}",
                            "use a number in [0, 1] (1 ignores the memory; EVA uses 0.5)")
        for name in ("delta", "distance_scale", "value_clip"):
            if not (math.isfinite(numbers[name]) and numbers[name] > 0):
                raise self.fail(f"retrieval.{name}", f"is {numbers[name]}",
                                "use a finite number > 0")

    def value_range(self, pair: list[Any]) -> tuple[float, float]:
        ok = (len(pair) == 2 and all(isinstance(v, int | float) and not isinstance(v, bool)
                                     and math.isfinite(v) for v in pair) and pair[0] < pair[1])
        if not ok:
            raise self.fail("retrieval.value_range", f"is {pair!r}",
                            "give [lo, hi] with finite lo < hi, the memory values that "
                            "effectiveness 0 and 1 map to")
        return float(pair[0]), float(pair[1])

    def embedder(self, data: Mapping[str, Any], layout: ObservationLayout) -> dict[str, Any]:
        kind = data.get("kind")
        if kind not in SERVABLE_EMBEDDERS:
            raise self.fail("retrieval.embedder.kind", f"is {kind!r}; the server embeds "
                            f"contexts with the numeric embedder only (no model, no network)",
                            "export from a run trained with rag.embedder.kind=numeric")
        weights = data.get("feature_weights") or {}
        try:
            embedder = NumericContextEmbedder(layout, weights)
        except ValueError as error:
            raise self.fail("retrieval.embedder.feature_weights", f"is invalid ({error})",
                            "export the bundle again") from error
        for key in ("name", "dim"):
            if key in data and data[key] != getattr(embedder, key):
                raise self.fail(f"retrieval.embedder.{key}", f"is {data[key]!r} but this "
                                f"server's embedder is {getattr(embedder, key)!r}: the memory's "
                                f"keys would not be comparable", "export the bundle again")
        return {"kind": kind, "feature_weights": dict(weights), "name": embedder.name,
                "dim": embedder.dim}

    def source_spec(self, data: Mapping[str, Any]) -> SourceSpec:
        values = {}
        for key in ("run_id", "experiment", "git_commit"):
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise self.fail(f"source.{key}", f"must be a string or null, not {value!r}",
                                "correct it or export again")
            values[key] = value
        return SourceSpec(created_at=self.require(data, "created_at", str, "source"), **values)

    def metrics(self, data: Any) -> dict[str, float]:
        if not isinstance(data, Mapping) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in data.values()):
            raise self.fail("metrics", f"must map names to numbers, not {data!r}",
                            "correct it or export again")
        return {str(k): float(v) for k, v in data.items()}


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "a list", Mapping: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in _tuple(kind))


# ---------------------------------------------------------------------------- bundles


class Bundle:
    """A loaded, validated bundle: its manifest, game, policy network and memory snapshot.

    Everything is read into memory when loading (an archive is extracted into a temporary
    directory and removed again), so a bundle never depends on files after ``load_bundle``.
    ``new_brain()`` makes a brain with its own copy of the memory snapshot.
    """

    def __init__(self, path: Path, manifest: Manifest, snapshot: EpisodicMemory,
                 policy: bytes | None) -> None:
        self.path = path
        """Where the bundle was loaded from (its directory or archive)."""
        self.manifest = manifest
        self.game: GameDefinition = load_game(manifest.game)
        self.layout = ObservationLayout.for_game(self.game)
        self.policy = policy
        """The ONNX policy's bytes (``policy.onnx``); None for a scripted policy."""
        self._snapshot = snapshot.records()
        self._memory_config = snapshot.config
        self._next_id = snapshot.next_id

    @property
    def memory_size(self) -> int:
        """Entries in the memory snapshot."""
        return len(self._snapshot.ids)

    def memory_copy(self, index: ServedIndex = "bundle") -> EpisodicMemory:
        """A fresh memory holding the snapshot (every brain gets its own), indexed as the
        snapshot was (``bundle``) or as :func:`served_memory_config` says."""
        config = served_memory_config(self._memory_config, index)
        return EpisodicMemory.from_records(config, self._snapshot, self._next_id)

    def serves(self, boss_actions: Sequence[str]) -> bool:
        """Whether a game with these boss actions can be served (same names, any order)."""
        ours = self.manifest.vocabulary["boss_actions"]
        return len(boss_actions) == len(ours) and set(boss_actions) == set(ours)

    def new_brain(self, seed: int = 0, memory_index: ServedIndex = "bundle") -> BossBrain:
        """A fresh brain (BundleBrain, or ScriptedBrain for a scripted policy) for one game;
        ``memory_index`` as for :meth:`memory_copy`."""
        from serving.brain import brain_for  # noqa: PLC0415 (brain imports this module)

        return brain_for(self, seed=seed, memory_index=memory_index)

    def __repr__(self) -> str:
        return (f"Bundle({self.manifest.policy_version!r}, game={self.game.name!r}, "
                f"policy={self.manifest.policy.kind}, memory={self.memory_size}, "
                f"path={str(self.path)!r})")


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Load and validate a bundle directory or ``.tar.gz`` archive.

    Raises ValueError (what is wrong, how to fix it) for a malformed manifest, a missing
    policy file or memory, or a memory that does not fit the manifest.
    """
    source = Path(path)
    if source.is_file():
        with tempfile.TemporaryDirectory(prefix="bosslab-bundle-") as tmp:
            return _load_directory(_extract(source, Path(tmp)), source)
    if not source.is_dir():
        raise ValueError(f"{source}: no such bundle. Pass a bundle directory or its "
                         f"{ARCHIVE_SUFFIX} archive (python -m experiments.export prints both).")
    return _load_directory(source, source)


def _load_directory(directory: Path, source: Path) -> Bundle:
    manifest = read_manifest(directory)
    policy = _read_policy(directory, manifest)
    snapshot = _load_memory(directory, manifest)
    return Bundle(source, manifest, snapshot, policy)


_SAFE_EXTRACTION: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
"""Python's own safe extraction where it has it (3.11.4+); the members are checked anyway."""


def _extract(archive: Path, into: Path) -> Path:
    """Extract a bundle archive safely; returns the directory holding ``manifest.json``."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                name = Path(member.name)
                if name.is_absolute() or ".." in name.parts or not (member.isfile()
                                                                     or member.isdir()):
                    raise ValueError(f"{archive}: unsafe archive member {member.name!r} (an "
                                     f"absolute path, '..' or a link). Re-create the archive "
                                     f"with python -m experiments.export.")
            tar.extractall(into, **_SAFE_EXTRACTION)
    except tarfile.TarError as error:
        raise ValueError(f"{archive}: not a readable {ARCHIVE_SUFFIX} archive ({error}). Pass "
                         f"a bundle directory or the archive experiments.export wrote.") from error
    manifests = sorted(into.rglob(MANIFEST_FILE))
    if len(manifests) != 1:
        raise ValueError(f"{archive}: expected one {MANIFEST_FILE} in the archive, found "
                         f"{len(manifests)}. Archive one bundle directory.")
    return manifests[0].parent


def _read_policy(directory: Path, manifest: Manifest) -> bytes | None:
    if manifest.policy.kind == "scripted":
        return None
    file = directory / str(manifest.policy.file)
    if not file.is_file():
        raise ValueError(f"{directory}: the manifest's policy.file {manifest.policy.file!r} is "
                         f"missing from the bundle. Fix: export the bundle again (it writes "
                         f"{POLICY_FILE}).")
    return file.read_bytes()


def _load_memory(directory: Path, manifest: Manifest) -> EpisodicMemory:
    spec = manifest.retrieval
    where = directory / spec.memory
    try:
        memory = EpisodicMemory.load(where)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ValueError(f"{where}: the memory snapshot (field 'retrieval.memory') cannot be "
                         f"read ({error}). Fix: export the bundle again.") from error
    moves = len(manifest.vocabulary["boss_actions"])
    dim = spec.embedder["dim"]
    if memory.config.dim != dim or memory.config.moves != moves:
        raise ValueError(f"{where}: the memory has keys of dim {memory.config.dim} for "
                         f"{memory.config.moves} moves, but the manifest's embedder makes keys of "
                         f"dim {dim} for {moves} moves. Fix: export the bundle again.")
    return memory


def write_bundle(directory: str | os.PathLike[str], manifest: Manifest, memory: EpisodicMemory,
                 *, policy: str | os.PathLike[str] | None = None,
                 model_card: str | None = None) -> Path:
    """Write a bundle directory (new, or an empty directory), all or nothing; returns its path.

    ``policy`` is the ONNX file to copy in (required unless the policy is scripted).
    """
    target = Path(directory)
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise ValueError(f"{target} exists: bundles are versioned and never overwritten. Remove "
                         f"it, or write to another (new or empty) directory.")
    if (policy is None) != (manifest.policy.kind == "scripted"):
        raise ValueError(f"a {manifest.policy.kind} bundle needs "
                         f"{'no' if policy is None else 'an'} ONNX file; pass policy="
                         f"{'<path to policy.onnx>' if policy is None else 'None'}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write_manifest(manifest, staging)
        memory.save(staging / manifest.retrieval.memory)
        if policy is not None:
            shutil.copyfile(policy, staging / str(manifest.policy.file))
        if model_card is not None:
            (staging / MODEL_CARD_FILE).write_text(model_card)
        load_bundle(staging)  # what is written must load
        staging.chmod(0o755)  # mkdtemp makes it private
        if target.exists():
            target.rmdir()  # empty, checked above
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def archive_bundle(directory: str | os.PathLike[str]) -> Path:
    """``<directory>.tar.gz`` holding the bundle directory; returns its path."""
    source = Path(directory)
    archive = source.with_name(source.name + ARCHIVE_SUFFIX)
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(source, arcname=source.name)
    partial.replace(archive)
    return archive


def served_memory_config(config: MemoryConfig, index: ServedIndex) -> MemoryConfig:
    """The memory config a server uses: the bundle's own (``bundle``), ``exact``, or ``ivf``
    with inverted lists sized for the memory's capacity.

    A served memory fills up (one entry per outcome) and then stays full, evicting its oldest
    entry at every write, so its steady state is ``capacity`` entries. Exact search and
    removal scan every entry of a move; IVF scans ``nprobe`` of ``nlist`` lists and removes
    through a hash table. ``nlist`` is the square root of a full move's entries (8 to 1024), so
    a move trains its lists once it holds 39 x nlist entries (about 30 ms of CPU, in a
    background thread at the lowest priority: the move is searched exactly until the first
    write after they are trained), and ``nprobe`` a tenth of them, at least 8 (at the default 20,000
    entries: 8 of 82 lists, half the search time of a quarter of them, with recall@8 against
    exact search of 1.0000 on 1,000 of the load benchmark's situations and 0.9992 on 1,000
    random keys).
    """
    if index == "bundle":
        return config
    if index == "exact":
        return dataclasses.replace(config, index="exact")
    per_move = config.capacity / config.moves
    nlist = min(1024, max(8, round(math.sqrt(per_move))))
    nprobe = min(nlist, max(8, nlist // 10))
    return dataclasses.replace(config, index="ivf", ivf_nlist=nlist, ivf_nprobe=nprobe,
                               ivf_train_size=None, ivf_train_in_background=True)


def empty_memory(game: GameDefinition, embedder: Mapping[str, Any] | None = None,
                 capacity: int = DEFAULT_CAPACITY) -> EpisodicMemory:
    """An empty memory with keys of the (numeric) embedder of ``game``."""
    layout = ObservationLayout.for_game(game)
    weights = (embedder or {}).get("feature_weights") or {}
    dim = NumericContextEmbedder(layout, weights).dim
    return EpisodicMemory(MemoryConfig(dim=dim, moves=len(game.moves), capacity=capacity))


def numeric_embedder_spec(game: GameDefinition,
                          weights: Mapping[str, float] | None = None) -> dict[str, Any]:
    """``retrieval.embedder`` for the numeric embedder of ``game``."""
    embedder = NumericContextEmbedder(ObservationLayout.for_game(game), weights)
    return {"kind": "numeric", "feature_weights": dict(weights or {}), "name": embedder.name,
            "dim": embedder.dim}


def write_scripted_bundle(directory: str | os.PathLike[str], game: str = "duel",
                          boss: str = "reactive", *, lam: float = 0.5, k: int = 8,
                          capacity: int = DEFAULT_CAPACITY) -> Path:
    """A bundle of a scripted boss (``envs.bosses``) with an empty memory: the server runs and
    adapts with it, no training needed. ``directory`` must be new or empty; returns it."""
    if boss not in SCRIPTED_BOSSES:
        raise ValueError(f"unknown scripted boss {boss!r}: use one of "
                         f"{', '.join(SCRIPTED_BOSSES)}.")
    definition = load_game(game)
    layout = ObservationLayout.for_game(definition)
    embedder = numeric_embedder_spec(definition)
    manifest = manifest_for(
        definition, name=f"boss-{definition.name}", policy_version=f"scripted-{boss}",
        policy=PolicySpec(kind="scripted", file=None, scripted=boss, input_size=layout.size),
        retrieval=RetrievalSpec(mode="none", k=k, lam=lam, embedder=embedder),
        source=SourceSpec(created_at=now_iso()))
    return write_bundle(directory, manifest, empty_memory(definition, embedder, capacity))


__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "MEMORY_DIR",
    "MODEL_CARD_FILE",
    "POLICY_FILE",
    "POLICY_KINDS",
    "RETRIEVAL_MODES",
    "Bundle",
    "Manifest",
    "PolicySpec",
    "RetrievalSpec",
    "SourceSpec",
    "archive_bundle",
    "empty_memory",
    "load_bundle",
    "manifest_for",
    "numeric_embedder_spec",
    "read_manifest",
    "write_bundle",
    "write_manifest",
    "write_scripted_bundle",
]
