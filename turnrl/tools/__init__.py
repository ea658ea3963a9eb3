from turnrl.tools.base import Tool, ToolCall, ToolResult
from turnrl.tools.python import PythonTool, code_blocks
from turnrl.tools.sandbox import Limits, RunResult, Sandbox

__all__ = ["Tool", "ToolCall", "ToolResult", "PythonTool", "code_blocks", "Sandbox", "Limits", "RunResult"]
