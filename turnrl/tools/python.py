"""The Python tool: runs the last fenced Python block of a reply in the sandbox."""
from __future__ import annotations

import re

from turnrl.tools.base import Tool, ToolCall, ToolResult
from turnrl.tools.sandbox import Limits, Sandbox

_BLOCK = re.compile(r"```(?:python|py)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def code_blocks(text: str) -> list[str]:
    """Fenced ```python blocks; an unclosed last block (cut by the token limit) counts."""
    return [b for b in _BLOCK.findall(text) if b.strip()]


class PythonTool(Tool):
    """Executes code in a fresh sandboxed process. With ``persistent=True`` every earlier
    successful block of the episode runs again first (SimpleTIR keeps the interpreter's
    state between turns; re-running keeps each call isolated), with their output hidden."""

    name = "python"

    def __init__(self, sandbox: Sandbox | None = None, limits: Limits | None = None,
                 max_output_chars: int = 1024, persistent: bool = True):
        self.sandbox = sandbox or Sandbox(limits or Limits())
        self.max_output_chars, self.persistent = max_output_chars, persistent

    def parse(self, action: str) -> ToolCall | None:
        blocks = code_blocks(action)
        return ToolCall(self.name, blocks[-1]) if blocks else None

    def execute(self, call: ToolCall, state: dict) -> ToolResult:
        history: list[str] = state.setdefault("python_history", [])
        program = call.payload
        if self.persistent and history:
            # earlier blocks run with stdout silenced, then the new block prints normally
            prelude = "import sys as _s, io as _io\n_o = _s.stdout\n_s.stdout = _io.StringIO()\n"
            program = prelude + "\n".join(history) + "\n_s.stdout = _o\n" + call.payload
        res = self.sandbox.run_python(program)
        if res.ok:
            history.append(call.payload)
        state["tool_calls"] = state.get("tool_calls", 0) + 1
        state["tool_seconds"] = state.get("tool_seconds", 0.0) + res.wall_s
        return ToolResult(res.observation(self.max_output_chars), valid=True,
                          info={"exit_code": res.exit_code, "timed_out": res.timed_out, "wall_s": res.wall_s,
                                "memory_exceeded": res.memory_exceeded})
