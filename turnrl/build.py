"""Build envs, the policy and the engine from a :class:`RunConfig`."""
from __future__ import annotations

import inspect
import threading
from functools import lru_cache, partial
from typing import Callable

import torch

from turnrl.chat import ChatFormat
from turnrl.config import ConfigError, ModelConfig, RunConfig
from turnrl.engine.hf import HFEngine
from turnrl.envs import ArithmeticTasks, FileTasks
from turnrl.envs.base import Env
from turnrl.envs.registry import resolve, uses_tasks
from turnrl.envs.feedback import FeedbackEnv, ModelUser, RuleBasedUser, UserSimulator
from turnrl.envs.tasks import held_out_file, split_tasks

#: envs that take no ``split`` argument (and no task source) have no held-out instances
#: of their own: their eval seeds start here, so at least the seeds differ.
EVAL_SEED_OFFSET = 10**9


def build_tasks(cfg: RunConfig, split: str):
    t = cfg.task
    if t.source == "arithmetic":
        return ArithmeticTasks(split, digits=t.digits, operators=t.operators, operands=t.operands,
                               multiple_choice=t.multiple_choice, num_choices=t.num_choices, seed=t.seed)
    fields = (t.question_field, t.answer_field, t.answer_format, t.verifier, t.extractor, t.prompt_template)
    source = _load_file(t.path, *fields)
    if t.eval_path:  # train on one file, evaluate on another less what the training file also asks
        return source if split == "train" else held_out_file(source, _load_file(t.eval_path, *fields))
    return split_tasks(source, split, t.eval_size, seed=t.seed)


@lru_cache(maxsize=4)
def _load_file(*args) -> FileTasks:
    """Read and validate a task file once per process: the train and eval splits and
    every periodic evaluation share it."""
    return FileTasks(*args)


def env_factory(cfg: RunConfig, split: str, max_turns: int | None = None) -> Callable[[], Env]:
    """A zero-argument constructor of fresh envs for ``split`` ('train' or 'eval')."""
    e = cfg.env
    turns = max_turns or _configured_turns(cfg)
    if e.name == "retry":
        tasks = build_tasks(cfg, split)
        factory = resolve("retry")
        return partial(factory, tasks, max_turns=turns, feedback=e.feedback, success_decay=e.success_decay,
                       repetition_penalty=e.repetition_penalty, format_penalty=e.format_penalty,
                       system_prompt=e.system_prompt, lenient_cutoff=e.lenient_cutoff)
    cls = resolve(e.name)  # a class without reset / step is an error here, before any model loads
    kwargs = dict(e.kwargs)
    params = inspect.signature(cls).parameters
    if uses_tasks(e.name):
        kwargs["tasks"] = build_tasks(cfg, split)
    if "split" in params:
        kwargs["split"] = split
    takes_turns = "max_turns" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    if takes_turns and turns is not None:
        kwargs["max_turns"] = turns
    elif "max_turns" in e.model_fields_set and not takes_turns:
        raise ConfigError(f"env.max_turns would be ignored: {e.name} takes no max_turns argument "
                          f"(its episodes run to its own max_turns = {getattr(cls, 'max_turns', '?')})")
    if isinstance(cls, type) and issubclass(cls, FeedbackEnv) and isinstance(kwargs.get("user"), str):
        kwargs["user"] = build_user(kwargs["user"], kwargs.pop("persona", "a patient teacher"),
                                    kwargs.pop("user_seed", 0))
    return partial(cls, **kwargs)


def build_user(spec: str, persona: str = "a patient teacher", seed: int = 0) -> UserSimulator:
    """A simulated user: ``"rule"``; ``"http(s)://host/v1#model"`` (an OpenAI-compatible
    endpoint); or a model for the built-in engine (``"smollm2-135m"``, a directory, a hub
    id), loaded once per process and shared by every env that asks for it."""
    if spec == "rule":
        return RuleBasedUser(persona, seed)
    return ModelUser(_user_backend(spec), persona, seed)


_user_backends: dict[str, object] = {}
_user_backends_lock = threading.Lock()


def _user_backend(spec: str):
    with _user_backends_lock:
        if spec not in _user_backends:
            if spec.startswith(("http://", "https://")):
                from turnrl.endpoint import ChatEndpoint

                url, _, name = spec.partition("#")
                _user_backends[spec] = ChatEndpoint(url, name or None)
            else:
                _user_backends[spec] = build_engine(*load_for_inference(spec))
        return _user_backends[spec]


def _configured_turns(cfg: RunConfig) -> int | None:
    """``env.max_turns`` when the config sets it (always for the retry env), else None."""
    return cfg.env.max_turns if "max_turns" in cfg.env.model_fields_set or cfg.env.name == "retry" else None


def episode_turns(cfg: RunConfig) -> int:
    """The turn cap episodes run under: the configured one, else the env's own default
    (Wordle 6, Maze 40, ...)."""
    return _configured_turns(cfg) or env_factory(cfg, "eval")().max_turns


def has_split(cfg: RunConfig) -> bool:
    """Whether the env holds its own disjoint train / eval instances: it is fed by a task
    source (split by the source) or its class takes ``split``."""
    cls = resolve(cfg.env.name)
    return uses_tasks(cfg.env.name) or (isinstance(cls, type) and "split" in inspect.signature(cls).parameters)


def seed_offset(cfg: RunConfig, split: str) -> int:
    """Eval seeds start at 0 for envs with a split of their own; an env without one gets
    eval seeds from EVAL_SEED_OFFSET (different seeds; the instances may still repeat)."""
    return EVAL_SEED_OFFSET if (split == "eval" and not has_split(cfg)) else 0


def build_policy(cfg: RunConfig):
    from turnrl.models import load_model, load_tokenizer

    tok = load_tokenizer(cfg.model.name)
    model = load_model(cfg.model.name, dtype=torch.float32)
    if cfg.model.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.model.lora_rank, lora_alpha=cfg.model.lora_alpha,
                                                 target_modules=list(cfg.model.lora_targets), lora_dropout=0.0))
    return model, tok


def load_for_inference(name: str):
    """(model, tokenizer) for evaluation or serving. ``name`` is anything ``model.name``
    takes, a run directory (its ``final/`` model), or a training checkpoint directory
    (``RUN/checkpoints/step_N``: the run's base model with the checkpoint's weights,
    LoRA adapters merged)."""
    from pathlib import Path

    from turnrl.models import ModelLoadError, load_model, load_tokenizer

    p = Path(name).expanduser()
    if (p / "state.pt").is_file():
        state = torch.load(p / "state.pt", map_location="cpu", weights_only=False)
        if "config" not in state or "model" not in state:
            raise ModelLoadError(f"{p / 'state.pt'}: not a turnrl checkpoint (no 'config' / 'model')")
        m = state["config"]["model"]  # a full dump: take the fields that apply
        keys = ["name", "finetune", "dtype"] + (["lora_rank", "lora_alpha", "lora_targets"] if m["finetune"] == "lora" else [])
        cfg = RunConfig(model=ModelConfig(**{k: m[k] for k in keys}))
        model, tok = build_policy(cfg)
        model.load_state_dict(state["model"])
        if cfg.model.finetune == "lora":
            model = model.merge_and_unload()
        return model.eval(), tok
    return load_model(name), load_tokenizer(name)


def for_sampling(model, cfg: RunConfig, what: str):
    """``model`` in ``model.dtype`` for a command that only samples (eval, rollout): bf16
    where this machine computes in bf16 natively, else fp32 with one line saying so."""
    from turnrl.learner import bf16_or_say

    if cfg.model.dtype == "bf16" and bf16_or_say(what):
        return model.to(torch.bfloat16)
    return model


def build_engine(model, tok, engine: str = "hf", vllm_kwargs: dict | None = None, prefix_cache_tokens: int = 0):
    """(sampler, chat format) for ``model``: the built-in :class:`HFEngine`, or with
    ``engine="vllm"`` a :class:`~turnrl.engine.vllm.VLLMEngine` built from the model's
    directory and then given ``model``'s current weights (so a fine-tuned, resumed or
    LoRA-merged model samples as itself), in bf16 when the model is. ``prefix_cache_tokens`` > 0 (the built-in
    engine): released rows' KV is kept (that many tokens, least recently used out) and new
    prompts start from the longest prefix it holds."""
    chat = ChatFormat(tok)
    if engine == "hf":
        if vllm_kwargs:
            raise ConfigError("vllm_kwargs would be ignored: the engine is 'hf'")
        from turnrl.engine.prefix_cache import PrefixCache

        cache = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens > 0 else None
        return HFEngine(model, chat.stop_ids, tok.pad_token_id, prefix_cache=cache), chat
    if engine != "vllm":
        raise ConfigError(f"engine {engine!r}: expected 'hf' or 'vllm'")
    from turnrl.engine.vllm import VLLMEngine

    kwargs = dict(vllm_kwargs or {})
    if next(model.parameters()).dtype == torch.bfloat16:
        kwargs.setdefault("dtype", "bfloat16")  # model.dtype = "bf16": vLLM computes in bf16 too
    return VLLMEngine.from_model(model, tok, chat.stop_ids, **kwargs), chat
