"""Env registry: ``make("retry", **kwargs)`` for ours, ``"module.path:Class"`` for a user's."""
from __future__ import annotations

import importlib
from typing import Callable

from turnrl.envs.base import Env

_REGISTRY: dict[str, Callable[..., Env]] = {}


def register(name: str, factory: Callable[..., Env]) -> None:
    if name in _REGISTRY:
        raise ValueError(f"env {name!r} is already registered")
    _REGISTRY[name] = factory


def registered() -> dict[str, Callable[..., Env]]:
    return dict(_REGISTRY)


def resolve(name: str) -> Callable[..., Env]:
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, TypeError, ValueError) as e:  # e.g. '.mod' (relative), ':Cls' (empty)
            raise ValueError(f"env {name!r}: cannot import {attr!r} from {module!r} ({e})") from e
        check_env_class(obj, name)
        return obj
    if name not in _REGISTRY:
        raise ValueError(f"unknown env {name!r}; registered: {sorted(_REGISTRY)}; or use 'module.path:Class'")
    return _REGISTRY[name]


def check_env_class(obj, name: str) -> None:
    """An env class must define ``reset`` and ``step``: one line naming what is missing,
    raised before anything is built (no model loads first)."""
    if not isinstance(obj, type):
        if callable(obj):  # a factory function: checked on what it builds (make)
            return
        raise ValueError(f"env {name!r} is a {type(obj).__name__}, not an env class")
    missing = sorted(set(getattr(obj, "__abstractmethods__", ())) |
                     {m for m in ("reset", "step") if not callable(getattr(obj, m, None))})
    if missing:
        raise ValueError(f"env {name!r}: class {obj.__name__} does not define {' / '.join(f'{m}()' for m in missing)} "
                         "(an env implements reset(seed) -> list[Message] and step(action) -> Step)")


def uses_tasks(name: str) -> bool:
    """Whether env ``name`` is fed by a task source (the [task] section): retry, tir, ..."""
    return bool(getattr(resolve(name), "uses_tasks", False))


def make(name: str, **kwargs) -> Env:
    env = resolve(name)(**kwargs)
    if not isinstance(env, Env) and not (hasattr(env, "reset") and hasattr(env, "step")):
        raise TypeError(f"env {name!r} built a {type(env).__name__}, which has no reset/step")
    return env
