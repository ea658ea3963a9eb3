"""``check_env``: validate any env, ours or a user's, against the contract."""
from __future__ import annotations

import math

from turnrl.types import Message, Step


class EnvCheckError(AssertionError):
    pass


def _check_messages(msgs, where: str) -> None:
    if not isinstance(msgs, list):
        raise EnvCheckError(f"{where} must return a list of Message, got {type(msgs).__name__}")
    for i, m in enumerate(msgs):
        if not isinstance(m, Message):
            raise EnvCheckError(f"{where}[{i}] is a {type(m).__name__}, not a turnrl Message")
        if m.role not in ("system", "user", "assistant", "tool") or not isinstance(m.content, str):
            raise EnvCheckError(f"{where}[{i}] has role {m.role!r} / content type {type(m.content).__name__}")


def _episode(env, seed: int, actions) -> list:
    opening = env.reset(seed)
    _check_messages(opening, "reset()")
    if not opening:
        raise EnvCheckError("reset() returned no messages")
    trace = [tuple((m.role, m.content) for m in opening)]
    max_turns = getattr(env, "max_turns", None)
    if not isinstance(max_turns, int) or max_turns < 1:
        raise EnvCheckError(f"env.max_turns must be an int >= 1, got {max_turns!r}")
    for t in range(max_turns):
        step = env.step(actions[t % len(actions)])
        if not isinstance(step, Step):
            raise EnvCheckError(f"step() must return a turnrl Step, got {type(step).__name__}")
        _check_messages(step.messages, "step().messages")
        if not isinstance(step.reward, (int, float)) or not math.isfinite(step.reward):
            raise EnvCheckError(f"step().reward must be a finite number, got {step.reward!r}")
        if not isinstance(step.terminated, bool) or not isinstance(step.truncated, bool):
            raise EnvCheckError("step().terminated and .truncated must be bools")
        if not isinstance(step.info, dict):
            raise EnvCheckError("step().info must be a dict")
        trace.append((step.reward, step.terminated, step.truncated, tuple((m.role, m.content) for m in step.messages)))
        if step.terminated or step.truncated:
            return trace
    raise EnvCheckError(f"episode did not end within max_turns={max_turns} steps")


def check_env(env, seeds=(0, 1, 2), actions=("I don't know.", "42", "<answer>1</answer>", "")) -> None:
    """Raise :class:`EnvCheckError` naming the first violation; return None if all is well.

    Checks: message and Step types; finite rewards; episodes end within ``max_turns``;
    garbage actions (empty string, nonsense) never raise; same seed => same episode.
    """
    for seed in seeds:
        first = _episode(env, seed, list(actions))
        again = _episode(env, seed, list(actions))
        if first != again:
            raise EnvCheckError(f"env is not deterministic: seed {seed} gave two different episodes")
