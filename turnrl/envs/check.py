"""``check_env``: validate any env, ours or a user's, against the contract."""
from __future__ import annotations

import math
import warnings
from collections.abc import Hashable

from turnrl.envs.base import env_call
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


def _check_fields(step: Step) -> None:
    if not isinstance(step.valid, bool):
        raise EnvCheckError(f"step().valid must be a bool, got {step.valid!r}")
    if step.correct is not None and not isinstance(step.correct, bool):
        raise EnvCheckError(f"step().correct must be a bool or None, got {step.correct!r}")
    if step.answer is not None and not isinstance(step.answer, str):
        raise EnvCheckError(f"step().answer must be a str or None, got {type(step.answer).__name__} {step.answer!r}")


def _hooks(env, where: str) -> None:
    for name in ("instance", "state", "gold_answer", "num_instances"):
        if hasattr(env, name) and not callable(getattr(env, name)):
            raise EnvCheckError(f"env.{name} is a {type(getattr(env, name)).__name__} attribute, which hides the "
                                f"Env.{name}() method; rename the attribute")
    for name in ("instance", "state"):
        value = getattr(env, name)() if callable(getattr(env, name, None)) else None
        if value is not None and not isinstance(value, Hashable):
            raise EnvCheckError(f"{where}: env.{name}() must be hashable, got {type(value).__name__}")
    gold = env.gold_answer() if callable(getattr(env, "gold_answer", None)) else None
    if gold is not None and not isinstance(gold, str):
        raise EnvCheckError(f"{where}: env.gold_answer() must be a str or None, got {type(gold).__name__}")


def _episode(env, seed: int, actions, reported: list) -> list:
    opening = env_call(env, seed, None)
    _check_messages(opening, "reset()")
    if not opening:
        raise EnvCheckError("reset() returned no messages")
    trace = [tuple((m.role, m.content) for m in opening)]
    max_turns = getattr(env, "max_turns", None)
    if not isinstance(max_turns, int) or max_turns < 1:
        raise EnvCheckError(f"env.max_turns must be an int >= 1, got {max_turns!r}")
    _hooks(env, f"after reset({seed})")
    for t in range(max_turns):
        step = env_call(env, seed, t + 1, actions[t % len(actions)])
        if not isinstance(step, Step):
            raise EnvCheckError(f"step() must return a turnrl Step, got {type(step).__name__}")
        _check_fields(step)
        reported.append(step.correct is not None)
        _check_messages(step.messages, "step().messages")
        if not isinstance(step.reward, (int, float)) or not math.isfinite(step.reward):
            raise EnvCheckError(f"step().reward must be a finite number, got {step.reward!r}")
        if not isinstance(step.terminated, bool) or not isinstance(step.truncated, bool):
            raise EnvCheckError("step().terminated and .truncated must be bools")
        if not isinstance(step.info, dict):
            raise EnvCheckError("step().info must be a dict")
        trace.append((step.reward, step.terminated, step.truncated, step.valid, step.correct, step.answer,
                      tuple((m.role, m.content) for m in step.messages)))
        if step.terminated or step.truncated:
            return trace
        _hooks(env, f"seed {seed}, after turn {t + 1}")
    raise EnvCheckError(f"episode did not end within max_turns={max_turns} steps")


def check_env(env, seeds=(0, 1, 2), actions=("I don't know.", "42", "<answer>1</answer>", "")) -> list[str]:
    """Raise :class:`EnvCheckError` naming the first violation; return notes (warnings
    that are not violations, also issued with ``warnings.warn``).

    Checks: message and Step types (``valid`` bool, ``correct`` bool or None, ``answer``
    str or None); ``instance()`` / ``state()`` hashable, ``gold_answer()`` a str or
    None; finite rewards; episodes end within ``max_turns``; garbage actions (empty
    string, nonsense) never raise; same seed => same episode. Notes when ``correct`` is
    never reported (Succ@k would be meaningless).
    """
    reported: list[bool] = []
    for seed in seeds:
        first = _episode(env, seed, list(actions), reported)
        again = _episode(env, seed, list(actions), [])
        if first != again:
            raise EnvCheckError(f"env is not deterministic: seed {seed} gave two different episodes")
    notes = []
    if not any(reported):
        notes.append(f"{type(env).__name__} never reports Step.correct (None on every turn checked): Succ@k, "
                     "Pass@k and the self-correction rates would be meaningless for it")
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return notes


def check_split(make_train, make_eval, probe: int = 2000) -> str:
    """Verify that no eval instance is a training instance. ``make_train`` / ``make_eval``
    build the env of each split. Every eval instance is compared with the training
    instances of seeds ``0..n-1`` (n: the train split's ``num_instances()``, or ``probe``
    when unbounded). Returns a one-line summary; raises :class:`EnvCheckError` on overlap."""
    train, ev = make_train(), make_eval()
    n_eval, n_train = ev.num_instances(), train.num_instances()

    def instances(env, n):
        out = set()
        for s in range(n):
            env_call(env, s, None)
            out.add(env.instance())
        return out

    seen_eval = instances(ev, min(n_eval or probe, probe))
    if None in seen_eval:
        return f"{type(ev).__name__}: instance() is None, so the split cannot be verified (seeds differ only)"
    seen_train = instances(train, min(n_train or probe, 10 * probe))
    both = seen_eval & seen_train
    if both:
        shown = ", ".join(repr(i)[:60] for i in sorted(both, key=repr)[:3])
        raise EnvCheckError(f"{type(ev).__name__}: {len(both)} eval instance(s) are also training instances: {shown}")
    return (f"{type(ev).__name__}: {n_eval if n_eval is not None else 'unbounded'} eval instances "
            f"({len(seen_eval)} checked), none among {len(seen_train)} training instances")
