"""A trained SB3 boss as an ONNX network, for serving without torch (``serving.brain``).

:func:`export_onnx` writes the policy's networks as one ONNX graph:

==============  ==========================  ===============================================
name            shape                       what
==============  ==========================  ===============================================
``observation`` float32 (batch, input_size)  input: the encoded observation (plus retrieval
                                            features for a ``rag=episodic`` policy)
``scores``      float32 (batch, moves)       actor-critic (PPO, A2C, MaskablePPO): the action
                                            logits (unnormalized); DQN: the Q-values
``value``       float32 (batch, 1)           actor-critic only: the critic's state value
==============  ==========================  ===============================================

The batch axis is dynamic. The graph is the policy's own modules (features extractor,
``mlp_extractor``, ``action_net``, ``value_net``; DQN's ``q_net``) wrapped in a small
``torch.nn.Module`` (:class:`ActorCriticScores`, :class:`QValueScores`), so nothing is
re-implemented.

:func:`check_parity` compares the ONNX graph (onnxruntime) with the trained torch policy,
computed through SB3's own API (``get_distribution`` and ``predict_values``; DQN's ``q_net``),
on recorded observations: the same best move on every row and scores and values within
``tolerance`` (1e-4). Actor-critic scores are compared as log-probabilities (the ONNX logits
through a log-softmax against the distribution's normalized logits), since logits are only
defined up to a constant. A row whose best two torch scores are within ``TIE`` of each other
agrees with either move (float rounding may break a true tie either way).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort
import torch
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.dqn.policies import DQNPolicy

INPUT_NAME = "observation"
SCORES = "scores"
VALUE = "value"
OPSET = 18
TOLERANCE = 1e-4
TIE = 1e-6
"""Torch scores this close count as a tie: either move agrees."""
POLICY_KINDS = {"actor_critic", "q_values"}


class ParityError(ValueError):
    """The ONNX policy disagrees with the torch policy; the message says where and by how much."""


class ParityReport(NamedTuple):
    """What :func:`check_parity` compared."""

    rows: int
    """Observations compared."""
    max_score_difference: float
    """Largest absolute difference of scores (log-probabilities for actor-critics)."""
    max_value_difference: float
    """Largest absolute difference of state values (0 for DQN)."""


class ActorCriticScores(torch.nn.Module):
    """An SB3 actor-critic's logits and value, from its own modules."""

    def __init__(self, policy: ActorCriticPolicy | MaskableActorCriticPolicy) -> None:
        super().__init__()
        self.share = policy.share_features_extractor
        self.pi_features = policy.pi_features_extractor
        self.vf_features = policy.vf_features_extractor
        self.mlp_extractor = policy.mlp_extractor
        self.action_net = policy.action_net
        self.value_net = policy.value_net

    def forward(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        observation = observation.float()
        if self.share:
            latent_pi, latent_vf = self.mlp_extractor(self.pi_features(observation))
        else:
            latent_pi = self.mlp_extractor.forward_actor(self.pi_features(observation))
            latent_vf = self.mlp_extractor.forward_critic(self.vf_features(observation))
        return self.action_net(latent_pi), self.value_net(latent_vf)


class QValueScores(torch.nn.Module):
    """A DQN's Q-values, from its own online network."""

    def __init__(self, policy: DQNPolicy) -> None:
        super().__init__()
        self.q_net = policy.q_net

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return self.q_net(observation.float())


def policy_kind(model: BaseAlgorithm) -> str:
    """``actor_critic`` (PPO, A2C, MaskablePPO) or ``q_values`` (DQN); TypeError otherwise."""
    if isinstance(model.policy, DQNPolicy):
        return "q_values"
    if isinstance(model.policy, ActorCriticPolicy | MaskableActorCriticPolicy):
        return "actor_critic"
    raise TypeError(f"ONNX export supports PPO, A2C, MaskablePPO and DQN models, not a "
                    f"{type(model.policy).__name__} policy.")


def input_size(model: BaseAlgorithm) -> int:
    shape = model.observation_space.shape
    if shape is None or len(shape) != 1:
        raise TypeError(f"ONNX export needs a flat observation space, not {shape}.")
    return int(shape[0])


def scores_module(model: BaseAlgorithm) -> torch.nn.Module:
    """The torch module that is exported (eval mode, on the CPU)."""
    module: torch.nn.Module
    if policy_kind(model) == "q_values":
        assert isinstance(model.policy, DQNPolicy)
        module = QValueScores(model.policy)
    else:
        assert isinstance(model.policy, ActorCriticPolicy | MaskableActorCriticPolicy)
        module = ActorCriticScores(model.policy)
    return module.to("cpu").eval()


def export_onnx(model: BaseAlgorithm, path: str | Path) -> Path:
    """Write ``model``'s policy as ONNX (see the module docstring); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    module = scores_module(model)
    outputs = [SCORES] if policy_kind(model) == "q_values" else [SCORES, VALUE]
    example = torch.zeros((2, input_size(model)), dtype=torch.float32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer chatter
        torch.onnx.export(
            module, (example,), str(target), input_names=[INPUT_NAME], output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *outputs)},
            opset_version=OPSET, dynamo=False)
    return target


def onnx_outputs(onnx_path: str | Path, observations: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of the ONNX graph for ``observations`` (CPU, one thread)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    results = session.run(names, {INPUT_NAME: np.asarray(observations, dtype=np.float32)})
    return {name: np.asarray(result) for name, result in zip(names, results, strict=True)}


def torch_outputs(model: BaseAlgorithm, observations: np.ndarray) -> dict[str, np.ndarray]:
    """The trained policy's scores (and values) through SB3's own API, float64."""
    policy = model.policy
    policy.set_training_mode(False)
    obs, _ = policy.obs_to_tensor(np.asarray(observations, dtype=np.float32))
    with torch.no_grad():
        if isinstance(policy, DQNPolicy):
            return {SCORES: policy.q_net(obs).double().numpy()}
        assert isinstance(policy, ActorCriticPolicy | MaskableActorCriticPolicy)
        distribution = policy.get_distribution(obs).distribution
        assert isinstance(distribution, torch.distributions.Categorical)
        return {SCORES: distribution.logits.double().numpy(),
                VALUE: policy.predict_values(obs).double().numpy()}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def check_parity(model: BaseAlgorithm, onnx_path: str | Path, observations: np.ndarray,
                 tolerance: float = TOLERANCE) -> ParityReport:
    """Raise :class:`ParityError` unless ONNX and torch agree on every row (module docstring)."""
    rows = np.asarray(observations, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] != input_size(model) or not len(rows):
        raise ValueError(f"observations must be (n >= 1, {input_size(model)}) like the model's "
                         f"input, got {rows.shape}.")
    expected = torch_outputs(model, rows)
    actual = onnx_outputs(onnx_path, rows)
    missing = set(expected) - set(actual)
    if missing:
        raise ParityError(f"{onnx_path} lacks the output(s) {sorted(missing)}: export it with "
                          f"agents.onnx_export.export_onnx.")
    scores = actual[SCORES].astype(np.float64)
    if policy_kind(model) == "actor_critic":
        scores = log_softmax(scores)
    _check_moves(expected[SCORES], scores, onnx_path)
    score_gap = _check_close(expected[SCORES], scores, SCORES, tolerance, onnx_path)
    value_gap = 0.0
    if VALUE in expected:
        value_gap = _check_close(expected[VALUE], actual[VALUE], VALUE, tolerance, onnx_path)
    return ParityReport(len(rows), score_gap, value_gap)


def _check_moves(expected: np.ndarray, actual: np.ndarray, onnx_path: str | Path) -> None:
    chosen = actual.argmax(axis=1)
    rows = np.arange(len(chosen))
    agrees = expected[rows, chosen] >= expected.max(axis=1) - TIE
    if not agrees.all():
        bad = np.flatnonzero(~agrees)
        raise ParityError(
            f"{onnx_path}: the ONNX policy picks another move than the torch policy on "
            f"{len(bad)} of {len(rows)} observations (first: row {bad[0]}, ONNX move "
            f"{chosen[bad[0]]}, torch move {expected[bad[0]].argmax()}). The export is wrong: "
            f"check the torch and onnx versions, and that the model loads as trained.")


def _check_close(expected: np.ndarray, actual: np.ndarray, what: str, tolerance: float,
                 onnx_path: str | Path) -> float:
    gap = np.abs(np.asarray(expected, dtype=np.float64) - np.asarray(actual, dtype=np.float64))
    worst = float(gap.max()) if gap.size else 0.0
    if not worst <= tolerance:  # also catches NaN
        row = int(np.unravel_index(np.nanargmax(gap), gap.shape)[0]) if gap.size else 0
        raise ParityError(
            f"{onnx_path}: ONNX and torch {what} differ by up to {worst:.3g} (row {row}), more "
            f"than the tolerance {tolerance:g}. The export is wrong: check the torch and onnx "
            f"versions, and that the model loads as trained.")
    return worst


def onnx_names(onnx_path: str | Path) -> tuple[Sequence[str], Sequence[str]]:
    """The graph's input and output names (for checks and messages)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    return ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])


__all__ = [
    "INPUT_NAME",
    "SCORES",
    "TOLERANCE",
    "VALUE",
    "ActorCriticScores",
    "ParityError",
    "ParityReport",
    "QValueScores",
    "check_parity",
    "export_onnx",
    "input_size",
    "onnx_outputs",
    "policy_kind",
    "scores_module",
    "torch_outputs",
]
