"""Multi-turn rollouts: every episode of a step advances together, one batched
``Engine.generate`` call per turn, token-in-token-out (DESIGN.md invariants 1-3)."""
from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from turnrl.chat import ChatFormat
from turnrl.config import ConfigError
from turnrl.engine.base import Engine, GenRequest, SamplingParams, mix_seed
from turnrl.envs.base import Env, EnvStepError, env_call
from turnrl.types import ActionText, Episode, Message, Step, Turn


CONTEXTS = ("full", "markovian", "window")
ON_ENV_ERROR = ("raise", "fail")


@dataclass(frozen=True)
class RolloutConfig:
    sampling: SamplingParams
    max_context: int = 2048  # tokens; an episode that would pass it is truncated ("context")
    retry_temperature: float | None = None  # temperature for attempts >= 2 (None: same as the first)
    context: str = "full"  # what each turn's action is sampled after: see ``turn_context``
    window_turns: int = 4  # window: earlier turns kept in the context
    state_tag: str = "state"  # markovian: the model's state block is <state>...</state>

    def __post_init__(self):
        if self.context not in CONTEXTS:
            raise ValueError(f"context={self.context!r} must be one of {', '.join(CONTEXTS)}")

    @classmethod
    def from_section(cls, r, seed: int) -> "RolloutConfig":
        """The training rollout of a ``[rollout]`` section: every field that shapes sampling."""
        return cls(SamplingParams(r.temperature, r.top_p, r.top_k, r.max_new_tokens, seed), r.max_context,
                   r.retry_temperature, **context_fields(r))


def context_fields(r) -> dict:
    """The context strategy of a ``[rollout]`` section, as ``RolloutConfig`` keywords."""
    return {"context": r.context, "window_turns": r.window_turns, "state_tag": r.state_tag}


def state_instruction(tag: str) -> str:
    """What ``markovian`` appends to the last opening message."""
    return (f"\n\nEnd every reply with <{tag}>...</{tag}>: a short note of everything you need to remember. "
            f"Each turn you will see only this task, your latest <{tag}> note and the latest observation.")


def state_pattern(tag: str) -> re.Pattern:
    return re.compile(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", re.DOTALL)


def split_state(text: str, tag: str) -> tuple[str | None, str]:
    """(the content of the reply's last complete state block or None, the reply without
    its state blocks: what the env parses)."""
    pat = state_pattern(tag)
    found = pat.findall(text)
    return (found[-1].strip() if found else None), pat.sub("", text).strip()


@dataclass
class _Past:
    """What a rebuilt context needs of one earlier turn."""

    text: str  # the reply as the template will show it
    action_ids: list[int]
    stopped: bool
    feedback: list[Message]


def turn_context(cfg: RolloutConfig, chat: ChatFormat, opening: list[Message], past: list[_Past],
                 state: str | None) -> list[int]:
    """The ids the next action is sampled after, when turns are not stitched:

    - ``full`` (a history-rewriting template): the whole conversation as the template
      renders it (earlier replies as text);
    - ``window``: the opening messages and the last ``window_turns`` turns (reply and the
      env's answer), the replies' sampled ids kept as they are when the template is
      append-only, else rendered by the template;
    - ``markovian``: the opening messages (with the state instruction appended to the
      last one), then an assistant message holding only the latest state block
      ``<tag>state</tag>``, then the env's latest answer (MEM1 / IterResearch): the same
      size whatever the turn.
    """
    if cfg.context == "markovian":
        if not past:
            return chat.render_ids(opening)
        block = f"<{cfg.state_tag}>{state or ''}</{cfg.state_tag}>"
        return chat.render_ids([*opening, Message("assistant", block), *past[-1].feedback])
    kept = past[-cfg.window_turns:] if cfg.context == "window" else past
    if chat.append_only:
        ids = chat.prompt_ids(opening)
        for p in kept:
            ids += p.action_ids + chat.continuation_ids(p.feedback, p.stopped, p.action_ids[-1] if p.action_ids else None)
        return ids
    return chat.render_ids([*opening, *(m for p in kept for m in (Message("assistant", p.text), *p.feedback))])


def turn_sampling(cfg: RolloutConfig, turn: int) -> SamplingParams:
    """Sampling of turn ``turn`` (0-based): ``retry_temperature`` from the second attempt
    on, and a seed per turn."""
    temp = cfg.retry_temperature if (turn > 0 and cfg.retry_temperature is not None) else cfg.sampling.temperature
    return replace(cfg.sampling, temperature=temp, seed=cfg.sampling.seed * 1000 + turn)


def add_turn(ep: Episode, turn: Turn, step: Step, max_turns: int | None = None) -> bool:
    """Append the policy's turn and the env's reply; True when the episode ended. An
    episode the env did not end is truncated ("max_turns") once it has ``max_turns``
    turns (the env's ``max_turns``: the K of Succ@k)."""
    ep.turns.append(turn)
    ep.messages += [Message("assistant", turn.text), *step.messages]
    if step.terminated or step.truncated:
        ep.terminated, ep.truncated = step.terminated, step.truncated
        ep.truncated_by = "max_turns" if step.truncated else ""
        return True
    if max_turns is not None and len(ep.turns) >= max_turns:
        ep.truncated, ep.truncated_by = True, "max_turns"
        return True
    return False


def require_correct(eps: list[Episode], setting: str, env_name: str) -> None:
    """``setting`` (e.g. ``rollout.rise_groups``) picks episodes by whether a turn was
    right: one :class:`ConfigError` line when the env reports no ``Step.correct`` (None:
    it has no notion of a right answer), instead of silently doing nothing."""
    for ep in eps:
        live = ep.live_turns
        if live and live[0].info.get("correct") is None:
            raise ConfigError(f"{setting} needs an env that reports Step.correct; env {env_name!r} reports None "
                              "(no notion of a right answer): set it to 0 or use an env with a checkable answer")


def member_index(seeds: list[int], group_ids: list[int]) -> list[int]:
    """How many earlier episodes of the list share each one's (seed, group): the samples
    of a GRPO group or of Pass@k get 0, 1, 2, ... A sampler seeded from (turn seed, env
    seed, member) gives an episode the same tokens in any batch."""
    count: dict[tuple[int, int], int] = {}
    out = []
    for key in zip(seeds, group_ids):
        out.append(count.get(key, 0))
        count[key] = out[-1] + 1
    return out


def step_envs(envs: list[Env], actions: list[str], seeds: list[int] | None = None, turn: int = 0,
              on_error: str = "raise") -> list[Step | EnvStepError]:
    """``env.step`` for each pair; concurrently (threads) when the envs do slow outside
    work (``Env.parallel_steps``: code execution, servers), in order otherwise. An env
    that raises stops the run with an error naming its class, seed and (1-based) turn;
    with ``on_error="fail"`` that error is returned in the step's place instead."""
    seeds = seeds if seeds is not None else [-1] * len(envs)

    def call(e: Env, a: str, s: int) -> Step | EnvStepError:
        try:
            return env_call(e, s, turn + 1, a)
        except EnvStepError as err:
            if on_error == "raise":
                raise
            return err

    calls = [lambda e=e, a=a, s=s: call(e, a, s) for e, a, s in zip(envs, actions, seeds)]
    if len(envs) > 1 and any(e.parallel_steps for e in envs):
        with ThreadPoolExecutor(min(len(envs), 32)) as pool:
            return list(pool.map(lambda call: call(), calls))
    return [call() for call in calls]


def fail_episode(ep: Episode, err: Exception) -> None:
    """Mark an episode whose env raised (``on_env_error="fail"``): ``info["failed"]`` holds
    the error, ``truncated_by`` is ``"env_error"``; the turn the env could not answer is
    not recorded. The learner leaves failed episodes out of the update (and of their
    group's statistics) and the step's metrics count them (``episodes_failed``)."""
    ep.info["failed"] = str(err)
    ep.truncated, ep.truncated_by = True, "env_error"


def _check_on_env_error(on_env_error: str) -> None:
    if on_env_error not in ON_ENV_ERROR:
        raise ValueError(f"on_env_error={on_env_error!r} must be one of {', '.join(ON_ENV_ERROR)}")


class _Context:
    """How an episode's next context is made; ``ids[i]``: the ids episode ``i``'s next action
    is sampled after. ``collect`` calls ``begin`` once, then ``shown`` / ``info`` /
    ``turn_ids`` / ``advance`` every turn."""

    def __init__(self, cfg: RolloutConfig, chat: ChatFormat):
        self.cfg, self.chat = cfg, chat
        self.ids: dict[int, list[int]] = {}

    def shown(self, i: int, text: str) -> tuple[str, bool]:
        """(what the env sees of the reply, its state block missing)"""
        return text, False

    def info(self, step: Step, missing: bool) -> dict:
        return step.record()


class _Stitched(_Context):
    """``full`` context with an append-only template: one growing token sequence per
    episode (the engine's cross-turn KV cache extends it). A turn records only the ids
    added since the previous action (``obs_ids``)."""

    def __init__(self, cfg: RolloutConfig, chat: ChatFormat):
        super().__init__(cfg, chat)
        self.obs: dict[int, list[int]] = {}  # episode -> the ids added since its last action

    def begin(self, i: int, opening: list[Message]) -> list[Message]:
        self.obs[i] = self.chat.prompt_ids(opening)
        self.ids[i] = list(self.obs[i])
        return opening

    def turn_ids(self, i: int) -> dict:
        return {"obs_ids": self.obs[i]}

    def advance(self, i: int, action: list[int], text: str, stopped: bool, feedback: list[Message]) -> bool:
        """Extend episode ``i`` by its action and the env's answer; False when the next
        action would have no room in ``max_context``."""
        self.obs[i] = self.chat.continuation_ids(feedback, stopped, action[-1] if action else None)
        self.ids[i] += action + self.obs[i]  # in place: each request copies it
        return len(self.ids[i]) + 1 <= self.cfg.max_context


class _Rebuilt(_Context):
    """Every other case: each turn's context is rebuilt (``turn_context``) and recorded on
    the turn (``context_ids``). Markovian: the env sees each reply without its state block;
    a reply with no complete state block is a void turn (``info["state_missing"]``) and the
    previous state is kept."""

    def __init__(self, cfg: RolloutConfig, chat: ChatFormat):
        super().__init__(cfg, chat)
        self.markov = cfg.context == "markovian"
        self.openings: dict[int, list[Message]] = {}
        self.pasts: dict[int, list[_Past]] = {}
        self.states: dict[int, str | None] = {}

    def begin(self, i: int, opening: list[Message]) -> list[Message]:
        if self.markov and opening:
            last = opening[-1]
            opening = [*opening[:-1], Message(last.role, last.content + state_instruction(self.cfg.state_tag))]
        self.openings[i], self.pasts[i], self.states[i] = opening, [], None
        self.ids[i] = turn_context(self.cfg, self.chat, opening, [], None)
        return opening

    def shown(self, i: int, text: str) -> tuple[str, bool]:
        """Updates the episode's state from the reply's state block (Markovian)."""
        if not self.markov:
            return text, False
        found, rest = split_state(text, self.cfg.state_tag)
        if found is not None:
            self.states[i] = found
        return rest, found is None

    def info(self, step: Step, missing: bool) -> dict:
        return {**step.record(), **({"state_missing": missing} if self.markov else {})}

    def turn_ids(self, i: int) -> dict:
        return {"obs_ids": self.ids[i], "context_ids": self.ids[i]}

    def advance(self, i: int, action: list[int], text: str, stopped: bool, feedback: list[Message]) -> bool:
        self.pasts[i].append(_Past(text, action, stopped, feedback))
        self.ids[i] = turn_context(self.cfg, self.chat, self.openings[i], self.pasts[i], self.states[i])
        return len(self.ids[i]) + 1 <= self.cfg.max_context


def collect(
    envs: list[Env],
    seeds: list[int],
    group_ids: list[int],
    engine: Engine,
    chat: ChatFormat,
    cfg: RolloutConfig,
    prefixes: list[list[str]] | None = None,
    on_env_error: str = "raise",
) -> list[Episode]:
    """Run one episode per env. ``prefixes[i]`` (optional) are earlier replies replayed
    into env ``i`` before sampling starts (kept as context, never trained).

    An env that raises (in ``reset`` or ``step``) stops the rollout with an
    :class:`EnvStepError` (``on_env_error="raise"``, the default); with ``"fail"`` only
    its episode ends, marked failed (``fail_episode``), and the others go on (the Ray
    rollout workers collect this way: one bad env instance does not stop a run).

    ``full`` context with an append-only template stitches one growing token sequence
    per episode (``_Stitched``); every other case rebuilds each turn's context
    (``_Rebuilt``, see ``turn_context``) and records it on the turn (``context_ids``)."""
    _check_on_env_error(on_env_error)
    run = _Rollout(envs, seeds, member_index(seeds, group_ids), engine, chat, cfg, on_env_error)
    episodes = [Episode(turns=[], group_id=gid, seed=seed) for seed, gid in zip(seeds, group_ids)]
    live = [i for i, ep in enumerate(episodes) if run.open(i, ep, prefixes[i] if prefixes else [])]
    turn = 0
    while live:
        live = run.turn(episodes, live, turn)
        turn += 1
    engine.release()
    for ep, env in zip(episodes, envs):
        ep.task_id = getattr(getattr(env, "task", None), "id", "")
    return episodes


class _Rollout:
    """What one ``collect`` call keeps fixed: the envs and their seeds, the engine, the
    context strategy (``ctx.ids[i]``: what episode ``i`` samples after next)."""

    def __init__(self, envs: list[Env], seeds: list[int], member: list[int], engine: Engine, chat: ChatFormat,
                 cfg: RolloutConfig, on_env_error: str):
        self.envs, self.seeds, self.member = envs, seeds, member
        self.engine, self.chat, self.cfg, self.on_env_error = engine, chat, cfg, on_env_error
        self.ctx = (_Stitched if cfg.context == "full" and chat.append_only else _Rebuilt)(cfg, chat)

    def open(self, i: int, ep: Episode, prefix: list[str]) -> bool:
        """Reset env ``i`` into ``ep`` and replay ``prefix``; False when its env raised and
        ``on_env_error="fail"`` ended the episode."""
        env = self.envs[i]
        try:
            opening = self.ctx.begin(i, list(env_call(env, self.seeds[i], None)))
            ep.messages, ep.gold_answer = list(opening), getattr(env, "gold_answer", lambda: None)()
            for text in prefix:
                self._replay(i, ep, text)
        except EnvStepError as err:
            if self.on_env_error == "raise":
                raise
            fail_episode(ep, err)
            return False
        return True

    def _replay(self, i: int, ep: Episode, text: str) -> None:
        """An earlier reply as a frozen turn: the env answers it, the context keeps it."""
        env = self.envs[i]
        action = self.chat.replay_ids(text)  # ends with the template's own end-of-turn token
        shown, missing = self.ctx.shown(i, text)
        step = env_call(env, self.seeds[i], len(ep.turns) + 1, shown)
        ep.turns.append(Turn(action_ids=action, action_logprobs=[0.0] * len(action), text=text, reward=step.reward,
                             void=missing, frozen=True, info=self.ctx.info(step, missing),
                             feedback=list(step.messages), **self.ctx.turn_ids(i)))
        ep.messages += [Message("assistant", text), *step.messages]
        if step.terminated or step.truncated or len(ep.turns) >= env.max_turns:
            raise ValueError(f"prefix of env {i} ends the episode; it cannot start a group")
        self.ctx.advance(i, action, text, True, list(step.messages))

    def turn(self, episodes: list[Episode], live: list[int], turn: int) -> list[int]:
        """One batched turn of the ``live`` episodes (``turn``: 0-based); the ones that go on."""
        sp = turn_sampling(self.cfg, turn)
        states, results, texts, latency = self._sample(live, sp)
        seen = [self.ctx.shown(i, t) for i, t in zip(live, texts)]
        env_texts = [ActionText(shown, cut_off=t.cut_off) for (shown, _), t in zip(seen, texts)]
        steps = step_envs([self.envs[i] for i in live], env_texts, [self.seeds[i] for i in live], turn,  # model output
                          self.on_env_error)  # never crashes a run: envs parse defensively
        temp = sp.temperature if sp.temperature > 0 else 1.0
        return [i for i, res, text, (_, missing), step, state in zip(live, results, texts, seen, steps, states)
                if self._record(i, episodes[i], res, text, missing, step, state, temp, latency)]

    def _sample(self, live: list[int], sp: SamplingParams):
        """One batched generate call for the live episodes: their env states before the action
        (GiGPO), one request each with its own budget (the turn limit, or its room left in the
        context) and its own seed, the results, the replies as ActionText (the env sees whether
        the token limit cut a reply off), and the call's seconds."""
        t0 = time.perf_counter()
        ids, cfg = self.ctx.ids, self.cfg
        states = [getattr(self.envs[i], "state", lambda: None)() for i in live]
        requests = [GenRequest(i, list(ids[i]), max(1, min(sp.max_new_tokens, cfg.max_context - len(ids[i]))),
                               seed=mix_seed(sp.seed, self.seeds[i], self.member[i])) for i in live]  # a copy: ids grow
        results = self.engine.generate(requests, sp)
        latency = time.perf_counter() - t0
        texts = [ActionText(self.chat.decode_action(res.token_ids), cut_off=not res.stopped) for res in results]
        return states, results, texts, latency

    def _record(self, i: int, ep: Episode, res, text: ActionText, missing: bool, step: Step | EnvStepError, state,
                temperature: float, latency: float) -> bool:
        """Add the sampled turn and the env's answer to episode ``i``; True when it goes on."""
        if isinstance(step, EnvStepError):
            fail_episode(ep, step)
            return False
        if add_turn(ep, Turn(
            action_ids=res.token_ids, action_logprobs=res.logprobs, text=str(text), reward=float(step.reward),
            void=not step.valid or missing, cut_by_length=not res.stopped, temperature=temperature,
            info=self.ctx.info(step, missing), feedback=list(step.messages), latency_s=latency, state=state,
            **self.ctx.turn_ids(i),
        ), step, self.envs[i].max_turns):
            return False
        if not self.ctx.advance(i, res.token_ids, str(text), res.stopped, list(step.messages)):
            ep.truncated, ep.truncated_by = True, "context"
            return False
        return True
