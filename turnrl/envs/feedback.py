"""Simulated users and MINT's feedback env (arXiv 2309.10691): after a wrong answer the
policy gets a natural-language hint from a simulated user instead of a bare "try again".

A :class:`UserSimulator` has a persona and a seed. ``RuleBasedUser`` needs nothing;
``ModelUser`` asks a model, on the built-in engine or any OpenAI-compatible endpoint,
and never lets it state the reference answer. Every reply carries its token count and
latency; a simulator that fails is counted (``info["sim_error"]``) apart from the
policy's mistakes, and the policy then gets the UFO line so the episode goes on.
"""
from __future__ import annotations

import random
import re
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from turnrl.engine.base import GenRequest, SamplingParams
from turnrl.envs.answers import parse_number
from turnrl.envs.retry import UFO_FEEDBACK, RetryEnv
from turnrl.envs.tasks import Task
from turnrl.types import Message


@dataclass
class UserReply:
    text: str
    tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None


class UserSimulator(ABC):
    def __init__(self, persona: str = "a patient teacher", seed: int = 0):
        self.persona, self.seed = persona, seed

    @abstractmethod
    def feedback(self, task: Task, conversation: list[Message], answer: str | None, attempt: int) -> UserReply:
        """A hint after the wrong ``answer`` (None: no answer found) at ``attempt``."""


class RuleBasedUser(UserSimulator):
    """Hints from the reference answer's type: too high / too low for numbers, 'not X'
    for options; never the answer itself. The phrasing varies with the seed."""

    OPENERS = ["Not quite.", "That is not right.", "Close, but no.", "Hmm, no."]

    def feedback(self, task, conversation, answer, attempt):
        t0 = time.perf_counter()
        rng = random.Random(f"{self.seed}:{task.id}:{attempt}")
        opener = rng.choice(self.OPENERS)
        if answer is None:
            text = f"{opener} I could not find a final answer in your reply; please state it clearly."
        elif task.choices:
            text = f"{opener} It is not {answer}. Check each option again."
        else:
            got, ref = parse_number(answer), parse_number(task.answer)
            if got is not None and ref is not None:
                text = f"{opener} {answer} is too {'high' if got > ref else 'low'}. Recheck your calculation."
            else:
                text = f"{opener} Read the question again and rethink your answer."
        return UserReply(text, tokens=len(text.split()), latency_s=time.perf_counter() - t0)


class ModelUser(UserSimulator):
    """A model plays the user: ``backend`` is ``(engine, chat)`` for the built-in engine or
    a :class:`turnrl.endpoint.ChatEndpoint`. Replies that contain the reference answer
    are redacted (``[...]``), as MINT keeps its simulated user from giving answers away."""

    def __init__(self, backend, persona: str = "a patient teacher", seed: int = 0, max_new_tokens: int = 48,
                 temperature: float = 0.0):
        super().__init__(persona, seed)
        self.backend, self.max_new_tokens, self.temperature = backend, max_new_tokens, temperature
        self._lock = threading.Lock()  # one engine, many episodes' threads

    def prompt(self, task: Task, answer: str | None) -> list[Message]:
        said = f"Their latest answer was {answer}, which is wrong." if answer else "Their reply gave no clear answer."
        return [Message("system", f"You are {self.persona}. A student is solving a problem. Reply with one short hint "
                                  "that helps them find the mistake. Never state the correct answer."),
                Message("user", f"Problem: {task.question}\nCorrect answer (secret): {task.answer}\n{said}\nYour hint:")]

    def feedback(self, task, conversation, answer, attempt):
        msgs = self.prompt(task, answer)
        sp = SamplingParams(temperature=self.temperature, max_new_tokens=self.max_new_tokens,
                            seed=self.seed * 1000 + attempt)
        t0 = time.perf_counter()
        try:
            if isinstance(self.backend, tuple):
                engine, chat = self.backend
                with self._lock:
                    res = engine.generate([GenRequest(("user-sim", task.id, attempt), chat.prompt_ids(msgs))], sp)[0]
                    engine.release()
                text, tokens = chat.decode_action(res.token_ids), len(res.token_ids)
            else:
                c = self.backend.complete(msgs, sp)
                text, tokens = c.text, c.completion_tokens
        except Exception as e:  # noqa: BLE001 - any simulator failure is counted, never the policy's
            return UserReply(UFO_FEEDBACK, latency_s=time.perf_counter() - t0, error=f"{type(e).__name__}: {e}")
        text = text.strip() or UFO_FEEDBACK
        if task.answer:  # the answer as a whole token: 103 in "is 103." but not in "1035" or "10.3"
            text = re.sub(rf"(?<![\w.]){re.escape(task.answer)}(?!\w|\.\d)", "[...]", text)
        return UserReply(text, tokens=tokens, latency_s=time.perf_counter() - t0)


class FeedbackEnv(RetryEnv):
    """The retry env with a simulated user's hint after each wrong attempt (MINT)."""

    parallel_steps = True  # a model-backed user is slow outside work

    def __init__(self, tasks, user: UserSimulator | str = "rule", persona: str = "a patient teacher", user_seed: int = 0,
                 **kwargs):
        super().__init__(tasks, **kwargs)
        if isinstance(user, UserSimulator):
            self.user = user
        elif user == "rule":
            self.user = RuleBasedUser(persona, user_seed)
        else:  # envs do not build models or clients: turnrl.build does (env_factory, build_user)
            raise ValueError(f"user={user!r}: pass a UserSimulator; a model or endpoint user is built by "
                             "turnrl.build.build_user (the [env] kwargs user = '...' of a config does this)")

    def reset(self, seed: int) -> list[Message]:
        self.conversation = super().reset(seed)
        return self.conversation

    def feedback_messages(self, action, answer, info):
        reply = self.user.feedback(self.task, self.conversation, answer, info["attempt"])
        info.update(sim_tokens=reply.tokens, sim_latency_s=reply.latency_s, sim_error=reply.error)
        self.conversation = self.conversation + [Message("assistant", action), Message("user", reply.text)]
        return [Message("user", reply.text)]
