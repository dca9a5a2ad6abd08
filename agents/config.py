"""Typed configuration of what trains a boss: the agent, what it trains against, the budget.

Each class is the schema of one Hydra config group (``configs/agent``, ``configs/objective``,
``configs/difficulty``, ``configs/budget``); the experiments register them with Hydra's
ConfigStore, so a wrong key or type fails when the config is composed. Nothing here imports
Hydra: the dataclasses are plain Python, ``MISSING`` marks a value a config group must supply,
and :meth:`AgentConfig.validate` checks what a type cannot (ranges, cross-field rules) with a
message that names the key, the allowed values and the fix.

Agent hyperparameters carry Stable-Baselines3's names and defaults (``learning_rate``,
``n_steps``, ``batch_size``, ...), and the network is SB3's ``policy_kwargs``
(``net_arch``, ``activation_fn``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import MISSING

ALGORITHMS = ("ppo", "maskable_ppo", "dqn", "a2c")
"""The agents :func:`agents.factory.make_agent` builds (the options of the group ``agent``)."""
ACTIVATIONS = ("tanh", "relu", "elu", "leaky_relu")
"""Activation functions ``policy_kwargs.activation_fn`` may name (torch.nn classes)."""
MASKING_ALGORITHMS = ("maskable_ppo",)
"""Agents that use the env's action masks while training (sb3-contrib's MaskablePPO)."""


@dataclass
class PolicyKwargs:
    """The policy network, as SB3's ``policy_kwargs``."""

    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer sizes (the same for the actor and the critic / the Q-network)."""
    activation_fn: str = "tanh"
    """Activation between hidden layers: one of ACTIVATIONS."""
    habit_weight: float | None = None
    """null: SB3's MlpPolicy. A number (actor-critic agents): agents.habit_policy's policy, whose
    move logits also get a learnable linear map of the boss's move habits, initialized to
    -habit_weight * identity (players who learn patterns punish habitual moves)."""
    habit_blind: bool = False
    """With habit_weight set: hide the habit block from the actor's network, so the habits
    reach the move logits only through that linear path (the network cannot learn to cancel
    it)."""


@dataclass
class AgentConfig:
    """What every agent has; the subclasses add their algorithm's hyperparameters."""

    algo: str = MISSING
    """The algorithm: one of ALGORITHMS (fixed by the agent config group option)."""
    policy: str = "MlpPolicy"
    """SB3's policy name (observations are flat vectors, so an MLP)."""
    learning_rate: float = 3e-4
    """Optimizer learning rate."""
    gamma: float = 0.99
    """Discount factor."""
    use_masking: bool = False
    """Train with the env's action masks (only maskable_ppo can)."""
    device: str = "cpu"
    """Torch device of the networks."""
    num_envs: int = 8
    """Fights stepped side by side by the batched simulator (the top-level num_envs overrides
    it): PPO's recipe is many envs and short rollouts, DQN's a few envs."""
    default_timesteps: int = 1_000_000
    """Env steps of budget=default for this agent: a few minutes on 2 CPU cores."""
    long_timesteps: int = 5_000_000
    """Env steps of budget=long for this agent."""
    policy_kwargs: PolicyKwargs = field(default_factory=PolicyKwargs)
    """The network (SB3's policy_kwargs)."""

    def validate(self) -> None:
        """Raise ValueError naming the key, the allowed values and the fix."""
        if self.algo not in ALGORITHMS:
            raise ValueError(f"agent.algo={self.algo!r} is unknown: the agents are "
                             f"{', '.join(ALGORITHMS)}. Pick one with agent=<name>, e.g. "
                             f"agent=ppo.")
        if self.use_masking and self.algo not in MASKING_ALGORITHMS:
            raise ValueError(
                f"agent.use_masking=true needs an agent that trains with action masks "
                f"({', '.join(MASKING_ALGORITHMS)}), not {self.algo}. Fix: agent=maskable_ppo, "
                f"or agent.use_masking=false ({self.algo} learns to avoid illegal moves from "
                f"their -0.05 penalty; evaluation always masks).")
        _positive("agent.learning_rate", self.learning_rate)
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"agent.gamma must be in (0, 1], got {self.gamma}: e.g. "
                             f"agent.gamma=0.99.")
        if not self.policy_kwargs.net_arch or min(self.policy_kwargs.net_arch) < 1:
            raise ValueError(f"agent.policy_kwargs.net_arch must list positive layer sizes, "
                             f"got {self.policy_kwargs.net_arch}: e.g. "
                             f"agent.policy_kwargs.net_arch=[64,64].")
        if self.policy_kwargs.habit_weight is not None and self.algo == "dqn":
            raise ValueError("agent.policy_kwargs.habit_weight is for actor-critic agents (ppo, "
                             "maskable_ppo, a2c): set agent.policy_kwargs.habit_weight=null "
                             "for dqn.")
        if self.policy_kwargs.habit_blind and self.policy_kwargs.habit_weight is None:
            raise ValueError("agent.policy_kwargs.habit_blind=true hides the habits from the "
                             "actor's network in favour of the habit path: also set "
                             "agent.policy_kwargs.habit_weight (e.g. 8).")
        if self.policy_kwargs.activation_fn not in ACTIVATIONS:
            raise ValueError(f"agent.policy_kwargs.activation_fn="
                             f"{self.policy_kwargs.activation_fn!r} is unknown: use one of "
                             f"{', '.join(ACTIVATIONS)}.")

    def hyperparameters(self) -> dict[str, Any]:
        """The algorithm's constructor arguments (SB3 names), without policy and network."""
        skip = {"algo", "policy", "use_masking", "device", "num_envs", "default_timesteps",
                "long_timesteps", "policy_kwargs"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


@dataclass
class PPOConfig(AgentConfig):
    """Stable-Baselines3's PPO."""

    algo: str = "ppo"
    n_steps: int = 256
    """Steps per env per rollout (a rollout is n_steps x num_envs transitions)."""
    batch_size: int = 256
    """Minibatch size."""
    n_epochs: int = 10
    """Passes over each rollout."""
    gae_lambda: float = 0.95
    """GAE bias/variance trade-off."""
    clip_range: float = 0.2
    """PPO's policy clipping."""
    normalize_advantage: bool = True
    """Normalize advantages per minibatch."""
    ent_coef: float = 0.01
    """Entropy bonus (keeps the boss from settling on one move too early)."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Gradient clipping."""
    target_kl: float | None = None
    """Stop an update's epochs early past this KL divergence (None: never)."""

    def validate(self) -> None:
        super().validate()
        _at_least_one("agent.n_steps", self.n_steps)
        _at_least_one("agent.n_epochs", self.n_epochs)
        if self.batch_size < 2:
            raise ValueError(f"agent.batch_size must be >= 2 (advantages are normalized per "
                             f"minibatch), got {self.batch_size}.")


@dataclass
class MaskablePPOConfig(PPOConfig):
    """sb3-contrib's MaskablePPO: PPO that only ever samples legal moves."""

    algo: str = "maskable_ppo"
    use_masking: bool = True


@dataclass
class A2CConfig(AgentConfig):
    """Stable-Baselines3's A2C."""

    algo: str = "a2c"
    learning_rate: float = 7e-4
    n_steps: int = 5
    """Steps per env per update."""
    gae_lambda: float = 1.0
    """GAE lambda (1.0: plain n-step returns)."""
    ent_coef: float = 0.0
    """Entropy bonus."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Gradient clipping."""
    use_rms_prop: bool = True
    """RMSprop (A2C's classic optimizer) instead of Adam."""
    rms_prop_eps: float = 1e-5
    """RMSprop epsilon."""
    normalize_advantage: bool = False
    """Normalize advantages."""

    def validate(self) -> None:
        super().validate()
        _at_least_one("agent.n_steps", self.n_steps)


@dataclass
class DQNConfig(AgentConfig):
    """Stable-Baselines3's DQN (greedy over Q-values; trains without masks)."""

    algo: str = "dqn"
    learning_rate: float = 1e-4
    buffer_size: int = 100_000
    """Replay buffer size (transitions)."""
    learning_starts: int = 1000
    """Env steps collected before learning starts."""
    batch_size: int = 64
    """Minibatch size."""
    tau: float = 1.0
    """Target network soft-update coefficient (1: hard update)."""
    train_freq: int = 4
    """Env steps (per env) between updates."""
    gradient_steps: int = 1
    """Gradient steps per update."""
    target_update_interval: int = 1000
    """Env steps between target network updates."""
    exploration_fraction: float = 0.2
    """Share of the budget over which epsilon falls."""
    exploration_initial_eps: float = 1.0
    """Epsilon at the start."""
    exploration_final_eps: float = 0.05
    """Epsilon at the end."""
    max_grad_norm: float = 10.0
    """Gradient clipping."""

    def validate(self) -> None:
        super().validate()
        for key in ("buffer_size", "batch_size", "train_freq", "target_update_interval"):
            _at_least_one(f"agent.{key}", getattr(self, key))
        if self.learning_starts < 0:
            raise ValueError(f"agent.learning_starts must be >= 0, got {self.learning_starts}.")
        for key in ("exploration_fraction", "exploration_initial_eps", "exploration_final_eps"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"agent.{key} must be in [0, 1], got {value}.")


AGENT_CONFIGS: dict[str, type[AgentConfig]] = {
    "ppo": PPOConfig, "maskable_ppo": MaskablePPOConfig, "dqn": DQNConfig, "a2c": A2CConfig,
}
"""The schema of each agent (the ConfigStore node behind ``configs/agent/<algo>.yaml``)."""


def agent_config(values: Mapping[str, Any]) -> AgentConfig:
    """The typed, validated agent config from a plain mapping (e.g. a logged config)."""
    algo = values.get("algo")
    if algo not in AGENT_CONFIGS:
        raise ValueError(f"agent.algo={algo!r} is unknown: the agents are "
                         f"{', '.join(ALGORITHMS)}. Pick one with agent=<name>, e.g. agent=ppo.")
    data = dict(values)
    data["policy_kwargs"] = PolicyKwargs(**dict(data.get("policy_kwargs") or {}))
    config = AGENT_CONFIGS[str(algo)](**data)
    config.validate()
    return config


@dataclass
class ObjectiveConfig:
    """What the boss is rewarded for (the env's ``objective``)."""

    name: str = MISSING
    """``engagement`` (fights that feel the way the designer asked) or ``defeat``."""
    episode: str = "fight"
    """What ends an episode for the learner: ``fight`` or ``series`` (a player's whole series,
    so a move is credited with what it does to later fights: players learn patterns)."""


@dataclass
class DifficultyConfig:
    """The difficulty level fights are played at while training."""

    level: str | None = MISSING
    """A level of the game (duel: easy, normal, hard); null draws one per fight."""


@dataclass
class BudgetConfig:
    """How long to train."""

    total_timesteps: int = MISSING
    """Env steps (boss decisions, summed over the envs) to train for."""

    def validate(self) -> None:
        _at_least_one("budget.total_timesteps", self.total_timesteps,
                      "e.g. budget=smoke, budget=default or budget.total_timesteps=200000")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{key} must be > 0, got {value}.")


def _at_least_one(key: str, value: int, fix: str = "") -> None:
    if value < 1:
        raise ValueError(f"{key} must be >= 1, got {value}" + (f": {fix}." if fix else "."))
