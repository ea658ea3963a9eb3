"""Tool-integrated reasoning in SimpleTIR's format (arXiv 2509.02479): the model writes
fenced Python blocks, sees their (truncated) output, and finishes with ``\\boxed{}``.

A turn with neither a code block nor a boxed answer is *void*: flagged
(``info["valid"] = False``, so ``Turn.void``) and, as in SimpleTIR, it ends the episode.
Code runs in the sandbox (:mod:`turnrl.tools.sandbox`); the output comes back as a
context message, never trained.
"""
from __future__ import annotations

from turnrl.envs.answers import EXTRACTORS, VERIFIERS, normalize
from turnrl.envs.base import Env
from turnrl.envs.tasks import Task, TaskSource, distinct_tasks
from turnrl.tools.python import PythonTool
from turnrl.tools.sandbox import Limits
from turnrl.types import Message, Step

TIR_SYSTEM = ("Solve the problem. You may write Python code in a ```python block; it will be run and "
              "you will see its output. When you know the answer, write it as \\boxed{answer}.")


class TIREnv(Env):
    """Reward 1 for a correct boxed answer, 0 otherwise; ``max_turns`` replies at most."""

    parallel_steps = True  # code of many episodes runs at once (the rollout steps envs in threads)
    uses_tasks = True

    def __init__(self, tasks: TaskSource, max_turns: int = 4, system_prompt: str | None = TIR_SYSTEM,
                 end_on_void: bool = True, observation_role: str = "user", max_output_chars: int = 512,
                 wall_s: float = 10.0, cpu_s: int = 5, memory_mb: int = 512, tool: PythonTool | None = None):
        if max_turns < 1:
            raise ValueError(f"max_turns={max_turns} must be >= 1")
        self.tasks, self.max_turns, self.system_prompt = tasks, max_turns, system_prompt
        self.end_on_void, self.role = end_on_void, observation_role
        self.tool = tool or PythonTool(limits=Limits(wall_s=wall_s, cpu_s=cpu_s, memory_mb=memory_mb),
                                       max_output_chars=max_output_chars)
        self.task: Task | None = None

    def num_instances(self) -> int | None:
        return distinct_tasks(self.tasks)

    def instance(self) -> str:
        return self.task.question

    def reset(self, seed: int) -> list[Message]:
        self.task = self.tasks[seed % len(self.tasks)]
        self.turn, self.tool_state = 0, {}
        return ([Message("system", self.system_prompt)] if self.system_prompt else []) + [Message("user", self.task.question)]

    def step(self, action: str) -> Step:
        if self.task is None:
            raise RuntimeError("call reset() before step()")
        self.turn += 1
        task = self.task
        info = {"attempt": self.turn, "reference": task.answer, "task_id": task.id}
        answer = EXTRACTORS["boxed"](action)
        if answer is not None:  # a final answer ends the episode, code or not
            correct = VERIFIERS[task.verifier](answer, task.answer)
            return Step([], float(correct), True, False, {**info, "kind": "answer"}, valid=True, correct=correct,
                        answer=normalize(answer))
        call = self.tool.parse(action)
        if call is None:  # SimpleTIR's void turn: no code, no answer
            if self.end_on_void or self.turn >= self.max_turns:
                return Step([], 0.0, self.end_on_void, not self.end_on_void, {**info, "kind": "void"}, valid=False,
                            correct=False)
            nudge = Message(self.role, "Write a ```python block to run code, or give your final answer as \\boxed{...}.")
            return Step([nudge], 0.0, False, False, {**info, "kind": "void"}, valid=False, correct=False)
        result = self.tool.execute(call, self.tool_state)
        out_of_turns = self.turn >= self.max_turns
        msgs = [] if out_of_turns else [Message(self.role, f"```output\n{result.observation}\n```")]
        return Step(msgs, 0.0, False, out_of_turns, {**info, "kind": "code", **result.info,
                                                      "tool_calls": self.tool_state.get("tool_calls", 0)}, correct=False)
