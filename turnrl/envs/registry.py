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
        return obj
    if name not in _REGISTRY:
        raise ValueError(f"unknown env {name!r}; registered: {sorted(_REGISTRY)}; or use 'module.path:Class'")
    return _REGISTRY[name]


def uses_tasks(name: str) -> bool:
    """Whether env ``name`` is fed by a task source (the [task] section): retry, tir, ..."""
    return bool(getattr(resolve(name), "uses_tasks", False))


def make(name: str, **kwargs) -> Env:
    env = resolve(name)(**kwargs)
    if not isinstance(env, Env) and not (hasattr(env, "reset") and hasattr(env, "step")):
        raise TypeError(f"env {name!r} built a {type(env).__name__}, which has no reset/step")
    return env
