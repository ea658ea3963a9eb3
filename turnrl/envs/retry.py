"""UFO's retry env: any single-turn task with a checkable answer becomes an episode of
up to ``max_turns`` attempts with content-free feedback after each wrong one
(Unary Feedback as Observation, arXiv 2507.14295).
"""
from __future__ import annotations

import re

from turnrl.envs.answers import EXTRACTORS, VERIFIERS, extract_choice, extract_explicit, normalize, option_letters
from turnrl.envs.base import Env
from turnrl.envs.tasks import Task, TaskSource, distinct_tasks
from turnrl.types import Message, Step

UFO_FEEDBACK = "Incorrect. Please think again."  # the authors' string (arXiv 2507.14295)
_EQUATION = re.compile(r"(-?\d+)\s*[-+*x×]\s*(-?\d+)")


def gold_reply(extractor: str, task: Task) -> str:
    """The reference answer written the way ``extractor`` reads it (``auto``: the format
    the question asks for: ``\\boxed{}``, an ``<answer>`` tag, else the bare answer)."""
    tag, boxed = f"<answer>{task.answer}</answer>", f"\\boxed{{{task.answer}}}"
    if extractor == "answer_tag" or (extractor == "auto" and "<answer>" in task.question):
        return tag
    if extractor == "boxed" or (extractor == "auto" and "\\boxed" in task.question):
        return boxed
    return task.answer


class RetryEnv(Env):
    """UFO: up to max_turns attempts at a checkable task, content-free feedback between them.

    Rewards (each switchable; defaults are the authors'):

    - success on attempt ``k`` (1-based): ``success_decay ** (k - 1)``, gamma = 0.5;
    - at episode end, repetition penalty ``-repetition_penalty * (1 - E/T)`` with ``E``
      distinct normalised answers among ``T`` valid ones, lambda = 0.5;
    - ``-format_penalty`` for each turn without a parseable answer, 0.1.

    The episode is ``terminated`` when solved and ``truncated`` when attempts run out.
    """

    uses_tasks = True

    def __init__(
        self,
        tasks: TaskSource,
        max_turns: int = 5,
        feedback: str = UFO_FEEDBACK,
        success_decay: float = 0.5,
        repetition_penalty: float = 0.5,
        format_penalty: float = 0.1,
        system_prompt: str | None = None,
        extractor: str | None = None,
        verifier: str | None = None,
        lenient_cutoff: bool = False,
    ):
        if max_turns < 1:
            raise ValueError(f"max_turns={max_turns} must be >= 1")
        for name, value, table in (("extractor", extractor, EXTRACTORS), ("verifier", verifier, VERIFIERS)):
            if value is not None and value not in table:
                raise ValueError(f"{name}={value!r} is not one of {sorted(table)}")
        self.tasks, self.max_turns, self.feedback = tasks, max_turns, feedback
        self.success_decay, self.repetition_penalty, self.format_penalty = success_decay, repetition_penalty, format_penalty
        self.system_prompt, self.extractor, self.verifier = system_prompt, extractor, verifier
        self.lenient_cutoff = lenient_cutoff  # a cut-off reply may give its answer by the last number
        self.task: Task | None = None

    def num_instances(self) -> int | None:
        return distinct_tasks(self.tasks)

    def instance(self) -> str:
        return self.task.question

    def state(self) -> tuple:
        """The attempts made and the set of answers tried (None: an unparseable reply)."""
        return len(self.answers), frozenset(self.answers)

    def gold_answer(self) -> str:
        """The reference answer as the task's extractor finds it in a reply."""
        return gold_reply(self.extractor or self.task.extractor, self.task)

    def reset(self, seed: int) -> list[Message]:
        self.task = self.tasks[seed % len(self.tasks)]
        self.answers: list[str | None] = []
        self.solved = False
        msgs = [Message("system", self.system_prompt)] if self.system_prompt else []
        return msgs + [Message("user", self.task.question)]

    def parse(self, action: str) -> tuple[str | None, str]:
        """Return (normalised answer or None, reason)."""
        task = self.task
        if task.operands:  # UFO lesson: only an answer to the original question counts
            for a, b in _EQUATION.findall(action):
                if int(a) not in task.operands or int(b) not in task.operands:
                    return None, "rewrote_question"
        name = self.extractor or task.extractor
        if name == "choice":  # only the task's own options count (5-8 options: up to H)
            raw = extract_choice(action, option_letters(task.question, len(task.choices) or None))
        elif name in ("auto", "last_number") and getattr(action, "cut_off", False) and not self.lenient_cutoff:
            # cut off by the token limit: its last number is likely a step of unfinished
            # reasoning, so only an answer stated as one counts
            raw = extract_explicit(action)
            if raw is None:
                return None, "cut_off"
        else:
            raw = EXTRACTORS[name](action)
        if raw is None and task.choices:  # an option named by its value instead of its letter
            named = {c for c in re.findall(r"-?\d+", action) if c in task.choices}
            if len(named) == 1:
                raw = "ABCDEFGH"[task.choices.index(named.pop())]
        if raw is None:
            return None, "no_answer"
        return raw, "ok"

    def step(self, action: str) -> Step:
        if self.task is None:
            raise RuntimeError("call reset() before step()")
        task, attempt = self.task, len(self.answers) + 1
        raw, reason = self.parse(action)
        correct = raw is not None and VERIFIERS[self.verifier or task.verifier](raw, task.answer)
        self.answers.append(None if raw is None else normalize(raw))
        reward = 0.0
        if raw is None:
            reward -= self.format_penalty
        if correct:
            reward += self.success_decay ** (attempt - 1)
        terminated = correct
        truncated = not correct and attempt >= self.max_turns
        if terminated or truncated:
            reward += self.repetition_term()
        info = {"attempt": attempt, "reason": reason, "reference": task.answer, "task_id": task.id}
        messages = [] if (terminated or truncated) else self.feedback_messages(action, raw, info)
        return Step(messages, reward, terminated, truncated, info, valid=raw is not None, correct=correct,
                    answer=None if raw is None else normalize(raw))

    def feedback_messages(self, action: str, answer: str | None, info: dict) -> list[Message]:
        """What the policy is told after a wrong attempt (UFO: the same content-free line;
        ``FeedbackEnv`` asks a simulated user). May add accounting keys to ``info``."""
        return [Message("user", self.feedback)]

    def repetition_term(self) -> float:
        """``-lambda * (1 - E/T)`` over the valid answers of the episode (0 if none)."""
        valid = [a for a in self.answers if a is not None]
        if not valid or self.repetition_penalty == 0:
            return 0.0
        return -self.repetition_penalty * (1 - len(set(valid)) / len(valid))
