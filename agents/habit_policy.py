"""Actor-critic policies with a direct path from the boss's move habits to its move preferences.

Players who learn patterns (``pattern_learning``) anticipate a boss's habitual moves: the more
often the boss has followed its last move with a move, the likelier that move is read and
punished. The observation shows the boss its own habits (``move_habits``: per move, the share
of its last move's transitions that went to it), but a 64x64 tanh network trained by PPO did
not learn to use them: trained defeat bosses won no more often than the random boss against
the dodger and the adaptive expert (README, *Quality bar*), while a hand-written boss that
weighs each move by ``exp(-8 * habit)`` beat both clearly.

:class:`HabitAwarePolicy` gives the actor that inductive bias without fixing it: its action
logits are the usual network's plus a learnable linear map of the habits, initialized to
``-habit_weight * identity`` (a move's logit falls with its own habit). PPO then adjusts both
paths; ``habit_weight=0`` starts from a plain skip connection. The critic is SB3's.
:class:`MaskableHabitAwarePolicy` is the same for sb3-contrib's MaskablePPO.

With ``habit_blind=True`` the actor's network does not see the habit block (it reads zeros
there), so the habits reach the move logits only through the linear path: the network learns
which moves suit the situation, the path how much a habit costs. Without it, PPO kept the path
at about ``-8 * identity`` and taught the network to cancel it (README, *Quality bar*).

>>> model = PPO(HabitAwarePolicy, env, policy_kwargs={"habits": (27, 30), "habit_weight": 8.0})
"""

from __future__ import annotations

from typing import Any

import torch
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import MlpExtractor


class HabitSkipExtractor(MlpExtractor):
    """SB3's MLP extractor whose actor latent also carries the observation's habit block."""

    def __init__(self, feature_dim: int, habits: tuple[int, int], *, blind: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(feature_dim, **kwargs)
        self.habits = slice(*habits)
        self.latent_dim_pi += habits[1] - habits[0]
        seen = torch.ones(feature_dim, device=kwargs.get("device", "cpu"))
        if blind:
            seen[self.habits] = 0.0
        self.actor_sees: torch.Tensor
        self.register_buffer("actor_sees", seen, persistent=False)  # rebuilt from `blind`

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        seen = features * self.actor_sees
        return torch.cat([self.policy_net(seen), features[:, self.habits]], dim=1)


class _HabitAware:
    """What both policies share: the extractor, the initial habit weights, saving them.

    A mixin placed before SB3's policy class, so ``super()`` reaches that class.
    """

    habits: tuple[int, int]
    habit_weight: float
    habit_blind: bool

    def __init__(self, *args: Any, habits: tuple[int, int] | list[int],
                 habit_weight: float = 8.0, habit_blind: bool = False, **kwargs: Any) -> None:
        start, stop = (int(v) for v in habits)
        if not 0 <= start < stop:
            raise ValueError(f"habits must be the (start, stop) positions of the observation's "
                             f"move_habits block, got {habits}.")
        # Set before nn.Module.__init__ runs _build, which reads them.
        object.__setattr__(self, "habits", (start, stop))
        object.__setattr__(self, "habit_weight", float(habit_weight))
        object.__setattr__(self, "habit_blind", bool(habit_blind))
        super().__init__(*args, **kwargs)

    def _build_mlp_extractor(self) -> None:
        policy: Any = self
        policy.mlp_extractor = HabitSkipExtractor(
            policy.features_dim, self.habits, blind=self.habit_blind, net_arch=policy.net_arch,
            activation_fn=policy.activation_fn, device=policy.device)

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)  # type: ignore[misc]
        action_net: Any = getattr(self, "action_net")  # noqa: B009 (built by SB3's _build)
        size = self.habits[1] - self.habits[0]
        with torch.no_grad():
            action_net.weight[:, -size:] = -self.habit_weight * torch.eye(
                action_net.out_features, size)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        parameters: dict[str, Any] = super()._get_constructor_parameters()  # type: ignore[misc]
        return {**parameters, "habits": self.habits, "habit_weight": self.habit_weight,
                "habit_blind": self.habit_blind}


class HabitAwarePolicy(_HabitAware, ActorCriticPolicy):
    """SB3's ``MlpPolicy`` (PPO, A2C) with the habit path (see the module docstring)."""


class MaskableHabitAwarePolicy(_HabitAware, MaskableActorCriticPolicy):
    """sb3-contrib's maskable ``MlpPolicy`` with the habit path."""
