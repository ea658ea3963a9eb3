"""The tool interface (VerlTool's shape, METHODS.md §5): a tool parses an action, may
decline it, and executes it with per-episode state, returning an observation.

An env that uses tools asks each tool in turn to ``parse`` the policy's reply; the first
that accepts it runs. Observations go back to the policy as context messages, so their
tokens are never trained (loss mask False on everything but sampled ids).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ToolCall:
    tool: str
    payload: Any  # what the tool parsed out of the action (code, a query, ...)
    valid: bool = True  # parsed, but malformed (the observation says why)
    error: str = ""


@dataclass
class ToolResult:
    observation: str
    done: bool = False  # the tool ends the episode
    valid: bool = True
    info: dict[str, Any] = field(default_factory=dict)


class Tool(ABC):
    name: str = "tool"

    @abstractmethod
    def parse(self, action: str) -> ToolCall | None:
        """The call in ``action``, or None to decline (another tool may take it)."""

    @abstractmethod
    def execute(self, call: ToolCall, state: dict) -> ToolResult:
        """Run ``call``; ``state`` is this episode's, kept across its turns."""
