"""Build envs, the policy and the engine from a :class:`RunConfig`."""
from __future__ import annotations

import inspect
from functools import lru_cache, partial
from typing import Callable

import torch

from turnrl.chat import ChatFormat
from turnrl.config import ConfigError, ModelConfig, RunConfig
from turnrl.engine.hf import HFEngine
from turnrl.envs import ArithmeticTasks, FileTasks
from turnrl.envs.base import Env
from turnrl.envs.registry import resolve, uses_tasks
from turnrl.envs.tasks import split_tasks

EVAL_SEED_OFFSET = 10**9  # custom envs: eval seeds start here; train seeds start at 0


def build_tasks(cfg: RunConfig, split: str):
    t = cfg.task
    if t.source == "arithmetic":
        return ArithmeticTasks(split, digits=t.digits, operators=t.operators, operands=t.operands,
                               multiple_choice=t.multiple_choice, num_choices=t.num_choices, seed=t.seed)
    source = _load_file(t.path, t.question_field, t.answer_field, t.answer_format, t.verifier, t.extractor, t.prompt_template)
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
                       system_prompt=e.system_prompt)
    cls = resolve(e.name)
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
    return partial(cls, **kwargs)


def _configured_turns(cfg: RunConfig) -> int | None:
    """``env.max_turns`` when the config sets it (always for the retry env), else None."""
    return cfg.env.max_turns if "max_turns" in cfg.env.model_fields_set or cfg.env.name == "retry" else None


def episode_turns(cfg: RunConfig) -> int:
    """The turn cap episodes run under: the configured one, else the env's own default
    (Wordle 6, Maze 40, ...)."""
    return _configured_turns(cfg) or env_factory(cfg, "eval")().max_turns


def seed_offset(cfg: RunConfig, split: str) -> int:
    """Envs fed by a task source have disjoint train / eval task sets, so their eval seeds
    start at 0 like train seeds; other envs' eval seeds start at EVAL_SEED_OFFSET."""
    return EVAL_SEED_OFFSET if (split == "eval" and not uses_tasks(cfg.env.name)) else 0


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


def build_engine(model, tok) -> tuple[HFEngine, ChatFormat]:
    chat = ChatFormat(tok)
    return HFEngine(model, chat.stop_ids, tok.pad_token_id), chat
