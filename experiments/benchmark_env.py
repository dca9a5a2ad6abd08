"""Simulator speed, measured side by side with Gymnasium's CartPole in one process.

    python -m experiments.benchmark_env [--seconds 3] [--num-envs 1024] [--game duel]

Pins the process to one CPU core, then times env steps/s of: our single env against
``CartPole-v1`` (both through ``gymnasium.make``), and our vector env against
``CartPoleVectorEnv`` (both at ``--num-envs``). Actions come from a precomputed random array
so choosing them costs nothing. Prints a markdown table with the ratios and the targets.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

import envs
from envs.boss_fight import BossFightVectorEnv

TARGET_SINGLE_RATIO = 0.25
TARGET_VECTOR_RATIO = 0.1
TARGET_VECTOR_STEPS = 1_000_000


def single_env_rate(env: gym.Env[Any, Any], seconds: float, actions: np.ndarray) -> float:
    """Env steps per second for a single env, resetting at episode ends."""
    env.reset(seed=0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
        steps += len(actions)
    return steps / (time.perf_counter() - start)


def vector_env_rate(env: gym.vector.VectorEnv[Any, Any, Any], seconds: float,
                    actions: np.ndarray) -> float:
    """Env steps per second (batched steps times envs) for a vector env."""
    env.reset(seed=0)
    batches, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in actions:
            env.step(batch)
        batches += len(actions)
    return batches * env.num_envs / (time.perf_counter() - start)


def paired_rounds(rounds: int, ours: Callable[[], float],
                  reference: Callable[[], float]) -> tuple[float, float, float]:
    """Alternate short measurements of ours and the reference; this machine's speed drifts, so
    each round's ratio compares runs made seconds apart. Returns medians: ours, reference, ratio.
    """
    pairs = [(ours(), reference()) for _ in range(rounds)]
    ours_rates, reference_rates = zip(*pairs, strict=True)
    ratios = [a / b for a, b in pairs]
    return (float(np.median(ours_rates)), float(np.median(reference_rates)),
            float(np.median(ratios)))


def pin_to_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    return "not pinned (no sched_setaffinity here)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--rounds", type=int, default=7, help="paired rounds (medians)")
    parser.add_argument("--num-envs", type=int, default=1024)
    parser.add_argument("--game", default="duel")
    args = parser.parse_args()
    pinning = pin_to_one_core()
    rng = np.random.default_rng(0)
    envs.load_game(args.game)  # fail early on a bad name

    boss = gym.make("bosslab/BossFight-v0", game=args.game)
    cartpole = gym.make("CartPole-v1")
    moves = len(boss.unwrapped.layout.moves)  # type: ignore[attr-defined]
    single_actions = rng.integers(0, moves, size=4096)
    ours_single, cartpole_single, single_ratio = paired_rounds(
        args.rounds,
        lambda: single_env_rate(boss, args.seconds, single_actions),
        lambda: single_env_rate(cartpole, args.seconds, single_actions % 2))

    n = args.num_envs
    vector_actions = rng.integers(0, moves, size=(64, n))
    ours_vec, cartpole_vec = BossFightVectorEnv(num_envs=n, game=args.game), CartPoleVectorEnv(n)
    ours_vector, cartpole_vector, vector_ratio = paired_rounds(
        args.rounds,
        lambda: vector_env_rate(ours_vec, args.seconds, vector_actions),
        lambda: vector_env_rate(cartpole_vec, args.seconds, vector_actions % 2))

    print(f"# Env speed ({platform.processor() or platform.machine()}, {pinning}, "
          f"game={args.game}, medians of {args.rounds} paired rounds of {args.seconds:g} s)\n")
    print("| env | steps/s | reference | reference steps/s | ratio | target |")
    print("|---|---:|---|---:|---:|---|")
    print(f"| BossFight-v0 (gymnasium.make) | {ours_single:,.0f} | CartPole-v1 | "
          f"{cartpole_single:,.0f} | {single_ratio:.3f}x | >= {TARGET_SINGLE_RATIO}x |")
    print(f"| BossFightVectorEnv ({n} envs) | {ours_vector:,.0f} | CartPoleVectorEnv ({n}) | "
          f"{cartpole_vector:,.0f} | {vector_ratio:.3f}x | >= {TARGET_VECTOR_RATIO}x and "
          f">= {TARGET_VECTOR_STEPS:,} steps/s |")
    met = (single_ratio >= TARGET_SINGLE_RATIO and vector_ratio >= TARGET_VECTOR_RATIO
           and ours_vector >= TARGET_VECTOR_STEPS)
    print(f"\nAll targets met: {'yes' if met else 'NO'}")


if __name__ == "__main__":
    main()
