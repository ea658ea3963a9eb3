"""Episodes against any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp's
server, ``turnrl serve``, a hosted API) through the official ``openai`` client.

Text in, text out: the endpoint applies its own chat template. Episodes run in their
own threads, at most ``concurrency`` requests in flight; the client retries failed
requests with exponential back-off and gives each a timeout. A request that still fails
marks its episode ``info["error"]``; evaluation counts such episodes apart and leaves
them out of the policy's metrics.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from turnrl.config import ConfigError
from turnrl.engine.base import SamplingParams, mix_seed
from turnrl.envs.base import Env, env_call
from turnrl.rollout import RolloutConfig, add_turn, member_index, turn_sampling
from turnrl.types import ActionText, Episode, Message, Turn


@dataclass
class Completion:
    text: str
    stopped: bool  # finish_reason == "stop"
    completion_tokens: int
    latency_s: float
    prompt_tokens: int = 0  # as the server counted them (0: it did not say)


class EndpointError(RuntimeError):
    pass


class ChatEndpoint:
    """A chat-completions endpoint. ``model`` None: the first model the server lists."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 concurrency: int = 8, timeout_s: float = 60.0, max_retries: int = 3):
        import openai

        if concurrency < 1:
            raise ValueError(f"concurrency={concurrency} must be >= 1")
        self.base_url, self.concurrency = base_url, concurrency
        key = api_key or os.environ.get("OPENAI_API_KEY") or "none"  # local servers take any key
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout_s, max_retries=max_retries)
        self._errors = (openai.APIError,)
        if model is None:
            try:
                listed = [m.id for m in self.client.models.list()]
            except self._errors as e:
                raise EndpointError(f"{base_url}: cannot list models ({e}); pass the model name") from e
            if not listed:
                raise EndpointError(f"{base_url}: the server lists no models; pass the model name")
            model = listed[0]
        self.model = model
        self.name = f"{model} @ {base_url}"

    def complete(self, messages: list[Message], sp: SamplingParams) -> Completion:
        t0 = time.perf_counter()
        extra: dict = {"top_p": sp.top_p} if sp.top_p < 1 else {}
        if sp.top_k:
            extra["extra_body"] = {"top_k": sp.top_k}  # vLLM and turnrl serve take it; the OpenAI API has none
        r = self.client.chat.completions.create(
            model=self.model, messages=[m.as_dict() for m in messages], temperature=sp.temperature,
            max_tokens=sp.max_new_tokens, seed=sp.seed, **extra)
        choice = r.choices[0]
        usage = getattr(r, "usage", None)
        return Completion(choice.message.content or "", choice.finish_reason == "stop",
                          int(usage.completion_tokens) if usage else 0, time.perf_counter() - t0,
                          int(usage.prompt_tokens or 0) if usage else 0)

    # -- Runner ------------------------------------------------------------------------
    def run(self, make_env, seeds: list[int], cfg: RolloutConfig, batch_size: int, done=lambda n: None) -> list[Episode]:
        """One episode per seed (``batch_size`` is the engine's notion; here concurrency rules)."""
        if cfg.context != "full":
            raise ConfigError(f"rollout.context = {cfg.context!r}: an endpoint is sent the whole conversation; "
                              "rebuilt contexts need the built-in engine")
        with ThreadPoolExecutor(self.concurrency) as pool:
            def one(s: int, m: int) -> Episode:
                ep = self.episode(make_env(), s, cfg, m)
                done(1)
                return ep

            return list(pool.map(one, seeds, member_index(seeds, seeds)))

    def episode(self, env: Env, seed: int, cfg: RolloutConfig, member: int = 0) -> Episode:
        """One episode; ``member`` tells apart episodes of the same seed (Pass@k samples):
        each turn's request seed comes from (turn seed, env seed, member)."""
        opening = env_call(env, seed, None)
        ep = Episode(turns=[], group_id=seed, seed=seed, messages=list(opening))
        turn, used = 0, 0  # used: the conversation's tokens as the server counted them last turn
        while True:
            sp = turn_sampling(cfg, turn)
            temp = sp.temperature
            room = cfg.max_context - used  # this episode's own budget (the feedback since is not counted yet)
            if room < 1:
                ep.truncated, ep.truncated_by = True, "context"
                break
            sp = replace(sp, max_new_tokens=min(sp.max_new_tokens, room),
                         seed=mix_seed(sp.seed, seed, member) % 2**31)  # 31 bits: servers differ in what they take
            try:
                c = self.complete(ep.messages, sp)
            except self._errors as e:
                ep.info["error"] = f"{type(e).__name__}: {e}"
                break
            used = c.prompt_tokens + c.completion_tokens
            step = env_call(env, seed, turn + 1, ActionText(c.text, cut_off=not c.stopped))  # model output never crashes a run: envs parse defensively
            if add_turn(ep, Turn([], [], [], text=c.text, reward=float(step.reward), void=not step.valid,
                                 cut_by_length=not c.stopped, temperature=temp if temp > 0 else 1.0, info=step.record(),
                                 feedback=list(step.messages), latency_s=c.latency_s,
                                 completion_tokens=c.completion_tokens), step, env.max_turns):
                break
            turn += 1
        ep.task_id = getattr(getattr(env, "task", None), "id", "")
        return ep
