"""Run configuration: one typed, validated record per section.

Loaded from TOML; overridden from the command line with ``--section.key value``.
Unknown keys, wrong types, and knobs the chosen algorithm / env / task source would
ignore are errors that name the field.
"""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    pass


class Section(BaseModel):
    # no inf / nan anywhere: an infinite learning rate or temperature is never meant
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_coercion(cls, data: Any) -> Any:
        """A number or a boolean must be written as one: pydantic would read ``"4"`` as 4,
        ``"yes"`` as true and ``true`` as 1."""
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if field is not None:
                _check_written(field.annotation, value, name)
        return data

    def _forbid_unless(self, condition: bool, fields: list[str], why: str) -> None:
        if condition:
            return
        set_here = [f for f in fields if f in self.model_fields_set]
        if set_here:
            raise ValueError(f"{', '.join(set_here)} would be ignored: {why}")


def _check_written(annotation, value, name: str) -> None:
    """``value`` of a field typed ``annotation``: a bool, int or float (alone, ``| None``, or
    inside lists and tuples of them) must be written as one."""
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or origin is typing.Union:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and value is not None:
            _check_written(rest[0], value, name)
        return
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            inner = args[0] if origin is list or (len(args) == 2 and args[1] is Ellipsis) else (
                args[i] if i < len(args) else None)
            if inner is not None:
                _check_written(inner, v, name)
        return
    if annotation is bool and not isinstance(value, bool):
        raise ValueError(f"{name}: expected true or false, got {value!r}")
    if annotation in (int, float) and isinstance(value, (bool, str)):
        raise ValueError(f"{name}: expected a number, got {value!r}")


class ModelConfig(Section):
    name: str = Field("smollm2-135m", description="'smollm2-135m' (bundled), a local HF model dir, or a hub id")
    finetune: Literal["full", "lora"] = Field("full", description="train all weights, or LoRA adapters (peft)")
    lora_rank: int = Field(16, ge=1, description="LoRA rank (finetune=lora)")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA alpha (finetune=lora)")
    lora_targets: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                    description="module names LoRA wraps (finetune=lora)")
    dtype: Literal["fp32", "bf16"] = Field("fp32", description="what the policy samples and trains in: bf16 holds the "
                                                               "model in bf16 (sampler and learner alike) and keeps fp32 "
                                                               "master weights in the optimizer")

    @model_validator(mode="after")
    def _check(self):
        self._forbid_unless(self.finetune == "lora", ["lora_rank", "lora_alpha", "lora_targets"], "model.finetune is 'full'")
        return self


class TaskConfig(Section):
    source: Literal["arithmetic", "file"] = Field("arithmetic", description="built-in arithmetic generator, or a local file")
    digits: int = Field(2, ge=1, le=9, description="arithmetic: digits per operand")
    operators: str = Field("+", pattern=r"^[+*-]+$", description="arithmetic: operators to draw from, e.g. '+-*'")
    operands: int = Field(2, ge=2, le=6, description="arithmetic: operands per question")
    multiple_choice: bool = Field(False, description="arithmetic: show lettered options and ask for the letter")
    num_choices: int = Field(4, ge=2, le=8, description="arithmetic: options per question")
    path: str | None = Field(None, description="file: .jsonl / .csv / .parquet")
    question_field: str = Field("question", description="file: question column")
    answer_field: str = Field("answer", description="file: answer column")
    answer_format: Literal["plain", "gsm8k"] = Field("plain", description="file: 'gsm8k' takes the answer after '####'")
    verifier: Literal["math", "numeric", "exact", "choice"] = Field("math", description="file: how answers are checked")
    extractor: Literal["auto", "answer_tag", "boxed", "last_number", "choice"] = Field("auto", description="file: how the answer is found in a reply")
    prompt_template: str = Field("{question}", description="file: prompt text; {question} is replaced")
    eval_size: int = Field(200, ge=1, description="file: rows held out for evaluation (seeded split of task.path)")
    eval_path: str | None = Field(None, description="file: evaluate on this file instead (e.g. a benchmark's test "
                                                    "set); its questions that also occur in task.path are dropped")
    seed: int = Field(0, description="seed of the train/eval split")

    @model_validator(mode="after")
    def _check(self):
        arith = ["digits", "operators", "operands", "multiple_choice", "num_choices"]
        files = ["path", "question_field", "answer_field", "answer_format", "verifier", "extractor", "prompt_template", "eval_size",
                 "eval_path"]
        self._forbid_unless(self.source == "arithmetic", arith, "task.source is not 'arithmetic'")
        self._forbid_unless(self.source == "file", files, "task.source is not 'file'")
        if self.source == "file" and not self.path:
            raise ValueError("path is required when source = 'file'")
        if self.source == "file":
            from turnrl.envs.tasks import check_prompt_template

            check_prompt_template(self.prompt_template)
        if self.eval_path:
            self._forbid_unless(False, ["eval_size"], "task.eval_path is set, so the eval split is that file")
        self._forbid_unless(self.multiple_choice, ["num_choices"], "task.multiple_choice is false")
        return self


class EnvConfig(Section):
    name: str = Field("retry", description="registered env name, or 'module.path:Class' for your own")
    max_turns: int = Field(5, ge=1, description="attempts per episode")
    feedback: str = Field("Incorrect. Please think again.", description="retry: message after a wrong answer (UFO's string)")
    success_decay: float = Field(0.5, ge=0, le=1, description="retry: reward gamma**(k-1) for success at attempt k")
    repetition_penalty: float = Field(0.5, ge=0, description="retry: lambda in -lambda*(1-E/T); 0 = off")
    format_penalty: float = Field(0.1, ge=0, description="retry: penalty per turn with no parseable answer; 0 = off")
    system_prompt: str | None = Field(None, description="retry: optional system message")
    lenient_cutoff: bool = Field(False, description="retry: a reply cut off by the token limit may still answer by its "
                                                    "last number (auto / last_number extractors); by default it needs "
                                                    "an answer tag, \\boxed{} or 'the answer is N'")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for a custom env class")

    @model_validator(mode="after")
    def _check(self):
        retry = ["feedback", "success_decay", "repetition_penalty", "format_penalty", "system_prompt", "lenient_cutoff"]
        self._forbid_unless(self.name == "retry", retry, f"env.name is {self.name!r}, not 'retry'")
        self._forbid_unless(self.name != "retry", ["kwargs"], "the retry env is configured by its own fields")
        return self


class RolloutSection(Section):
    prompts_per_step: int = Field(4, ge=1, description="distinct tasks per step")
    group_size: int = Field(8, ge=2, description="episodes per task (a GRPO group)")
    temperature: float = Field(0.7, gt=0, description="sampling temperature for training rollouts")
    retry_temperature: float | None = Field(None, gt=0, description="temperature for attempts >= 2 (default: same)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    top_k: int = Field(0, ge=0, description="top-k sampling; 0 = off")
    max_new_tokens: int = Field(32, ge=1, description="token limit per turn")
    max_context: int = Field(1024, ge=16, description="token limit per episode")
    rise_groups: int = Field(0, ge=0, description="extra groups per step started from the policy's own wrong first answer (RISE-style)")
    branch_groups: int = Field(0, ge=0, description="extra groups per step branched from a sampled episode at a random "
                                                    "turn h: its first h replies replayed, the rest sampled (REFUEL)")
    turn_penalty: float = Field(0.0, ge=0, description="a solved training episode loses this per turn before the solving "
                                                      "one (MinD: prefer fewer turns); 0 = off")
    max_turns_schedule: list[tuple[int, int]] = Field(
        default_factory=list, description="turn cap of training episodes from a step on, [[step, cap], ...] "
                                          "(WMAct annealing); eval keeps env.max_turns")
    context: Literal["full", "markovian", "window"] = Field(
        "full", description="what each turn is sampled after (training and eval): 'full' the whole conversation, "
                            "'markovian' the task + the model's latest state block + the latest observation "
                            "(MEM1), 'window' the task + the last window_turns turns")
    window_turns: int = Field(4, ge=1, description="window: earlier turns kept in the context")
    state_tag: str = Field("state", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$",
                           description="markovian: the state block the model writes, <state_tag>...</state_tag>")

    @model_validator(mode="after")
    def _check(self):
        self._forbid_unless(self.context == "window", ["window_turns"], f"rollout.context is {self.context!r}, not 'window'")
        self._forbid_unless(self.context == "markovian", ["state_tag"], f"rollout.context is {self.context!r}, not 'markovian'")
        steps = [s for s, _ in self.max_turns_schedule]
        if any(s < 0 for s in steps) or steps != sorted(set(steps)):
            raise ValueError(f"max_turns_schedule: steps {steps} must be >= 0 and strictly increasing")
        if any(cap < 1 for _, cap in self.max_turns_schedule):
            raise ValueError(f"max_turns_schedule: every cap must be >= 1, got {[c for _, c in self.max_turns_schedule]}")
        return self


class AlgoConfig(Section):
    name: str = Field("grpo", description="advantage estimator / algorithm: see `turnrl algos` (grpo, dr_grpo, rloo, "
                                          "reinforce_pp, turn_returns, gigpo, igpo, gae, archer, seeupo, refuel)")
    scale_by_std: bool = Field(True, description="grpo: divide group-centred returns by the group std")
    loss_agg: Literal["token_mean", "seq_mean"] = Field("token_mean", description="average over all tokens, or per sequence then over sequences")
    max_tokens_norm: int = Field(512, ge=1, description="dr_grpo: constant the summed token loss is divided by (x episodes sampled)")
    clip_low: float = Field(0.2, ge=0, lt=1, description="PPO ratio lower bound 1-clip_low")
    clip_high: float = Field(0.28, ge=0, description="PPO ratio upper bound 1+clip_high (DAPO clip-higher)")
    kl_coef: float = Field(0.0, ge=0, description="weight of the k3 KL to the frozen initial policy; 0 = no reference model")
    masks: list[str] | None = Field(None, description="masks and filters before the update: void, over_turn, overlong, "
                                                      "repeat, zero_variance, top_variance; unset: the algorithm's "
                                                      "default (`turnrl algos`): [\"zero_variance\"] where a group of "
                                                      "equal returns gets zero advantages, [] for per-turn and critic "
                                                      "estimators")
    top_variance_fraction: float = Field(0.25, gt=0, le=1, description="top_variance: fraction of groups kept, rounded down, at least one (StarPO-S / RAGEN-2)")
    ppo_epochs: int = Field(1, ge=1, description="passes over each step's episodes")
    minibatches: int = Field(1, ge=1, description="optimizer steps per pass (groups split evenly)")
    turn_gamma: float = Field(1.0, ge=0, le=1, description="turn_returns: discount between turns")
    gigpo_gamma: float = Field(0.95, ge=0, le=1, description="gigpo: discount of the step returns")
    gigpo_step_weight: float = Field(1.0, ge=0, description="gigpo: weight w of the step advantage")
    igpo_gamma: float = Field(1.0, ge=0, le=1, description="igpo: discount of the normalised turn rewards")
    gae_gamma: float = Field(1.0, ge=0, le=1, description="gae: discount between turns (within a turn: 1)")
    gae_lambda_turn: float = Field(0.95, ge=0, le=1, description="gae: lambda across turn boundaries")
    gae_lambda_token: float = Field(1.0, ge=0, le=1, description="gae: lambda between tokens of a turn")
    critic_lr: float = Field(1e-3, gt=0, description="gae / archer: learning rate of the critic")
    critic_epochs: int = Field(4, ge=1, description="gae / archer: critic gradient steps per training step")
    archer_gamma: float = Field(0.95, ge=0, le=1, description="archer: utterance-level discount")
    archer_tau: float = Field(0.1, gt=0, le=1, description="archer: soft target-update rate")
    replay_steps: int = Field(4, ge=1, description="archer: training steps of transitions kept for the critic")
    seeupo_clip: float = Field(0.2, ge=0, lt=1, description="seeupo: clip of the later-turn importance ratios")
    refuel_eta: float = Field(1000.0, gt=0, description="refuel: eta in ((D1 - D2) - eta (R1 - R2))^2")

    @model_validator(mode="after")
    def _check(self):
        from turnrl.algos.base import COMMON_FIELDS, get_algorithm
        from turnrl.algos.masks import MASKS

        try:
            algo = get_algorithm(self.name)
        except KeyError as e:
            raise ValueError(e.args[0]) from None
        unread = sorted(f for f in self.model_fields_set if f not in COMMON_FIELDS | algo.reads)
        if unread:
            raise ValueError(f"{', '.join(unread)} would be ignored: algorithm {self.name!r} does not read "
                             f"{'it' if len(unread) == 1 else 'them'}")
        if self.masks is None or "masks" not in self.model_fields_set:
            # the algorithm's default, written out (config.json shows it), and again when the
            # name is assigned later: it stays unset
            self.__pydantic_fields_set__.discard("masks")
            self.__dict__["masks"] = list(algo.default_masks)
        unknown = [m for m in self.masks if m not in MASKS]
        if unknown:
            raise ValueError(f"masks: unknown {unknown}; known: {', '.join(MASKS)}")
        self._forbid_unless("top_variance" in self.masks, ["top_variance_fraction"], "'top_variance' is not in algo.masks")
        return self


class TrainConfig(Section):
    steps: int = Field(20, ge=0, description="optimizer steps")
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas, each in [0, 1)")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps, then constant")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping")
    micro_groups: int = Field(1, ge=1, description="groups per forward/backward (gradient accumulation unit)")
    logprob_chunk: int = Field(1024, ge=1, description="action tokens per LM-head chunk")
    seed: int = Field(0, description="seed of sampling and initialisation")
    out_dir: str = Field("runs/demo", description="run directory: metrics, checkpoints, final model")
    checkpoint_every: int = Field(10, ge=0, description="steps between checkpoints; 0 = only at the end")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept on disk")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = torch's default")

    @model_validator(mode="after")
    def _check(self):
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas: each must be in [0, 1), got {list(self.betas)}")
        return self


class EvalConfig(Section):
    every: int = Field(0, ge=0, description="steps between held-out evaluations; 0 = only before and after")
    num_tasks: int = Field(200, ge=1, description="held-out tasks (fixed seeds 0..n-1 of the eval split)")
    temperature: float = Field(0.0, ge=0, description="multi-turn eval sampling; 0 = greedy")
    pass_k: int = Field(5, ge=0, description="k of Pass@k (independent single-turn samples); 0 = skip")
    pass_n: int | None = Field(None, ge=1, description="single-turn samples per task Pass@k is estimated from "
                                                       "(unbiased estimator, needs n >= k); default 2 * pass_k")
    pass_temperature: float = Field(0.7, gt=0, description="temperature of the Pass@k samples")
    max_new_tokens: int | None = Field(None, ge=1, description="per-turn limit in eval (default: rollout's)")
    batch_size: int = Field(128, ge=1, description="episodes per generate batch: wider batches decode in "
                                                   "fewer steps, each cheaper per row on a CPU, and hold more KV "
                                                   "memory (bench/eval_profile.py times 64, 128, 200)")
    before: bool = Field(True, description="evaluate the initial model too")
    collapse_sample: int = Field(32, ge=0, description="episodes (distinct first prompts, in seed order) scored "
                                                       "all-against-all for the template-collapse diagnostic "
                                                       "(built-in engine only); 0 = off")


    @model_validator(mode="after")
    def _check(self):
        self._forbid_unless(self.pass_k > 0, ["pass_n", "pass_temperature"], "eval.pass_k is 0 (no Pass@k)")
        if self.pass_n is not None and self.pass_n < self.pass_k:
            raise ValueError(f"pass_n={self.pass_n} must be >= pass_k={self.pass_k}")
        return self

    @property
    def pass_samples(self) -> int:
        """n of the Pass@k estimator: ``pass_n``, else twice ``pass_k``."""
        return self.pass_n if self.pass_n is not None else 2 * self.pass_k


class ScaleConfig(Section):
    """Where sampling and the update run. Absent, everything runs in this process as on a
    laptop; the same run config then scales out by this section alone."""

    engine: Literal["hf", "vllm"] = Field("hf", description="sampler: 'hf' (built in) or 'vllm' (GPU: pip install -e .[vllm]; "
                                                            "CPU: bash scripts/setup_vllm.sh, then run from .venv-vllm; "
                                                            "README 'The vLLM engine')")
    vllm_kwargs: dict[str, Any] = Field(default_factory=dict, description="engine=vllm: extra keyword arguments of "
                                                                          "vllm.LLM (e.g. gpu_memory_utilization)")
    rollout_workers: int = Field(0, ge=0, description="Ray actors that sample the rollouts, each with its own engine "
                                                      "and envs; 0 = in this process")
    learner_workers: int = Field(1, ge=1, description="processes of the update (torch FSDP, started by Ray; gloo on "
                                                      "CPU, NCCL on GPU); 1 = this process")
    ray_address: str | None = Field(None, description="Ray cluster to join ('auto', 'ray://host:10001', 'host:6379'); "
                                                      "unset: a local cluster started for the run")
    max_staleness: int = Field(0, ge=0, description="asynchronous rollouts: episodes may come from a policy up to this "
                                                    "many updates old (sampled while earlier steps train); 0 = synchronous")
    is_cap: float = Field(2.0, gt=0, description="max_staleness > 0: cap of the truncated importance weight "
                                                 "pi_prox / pi_behaviour (decoupled PPO, AReaL arXiv 2505.24298)")
    drift_bound: float = Field(0.1, gt=0, description="token audit: a mean |sampler - learner| log-prob above this is a "
                                                      "console warning and metrics flag 'drift_warning'")

    @model_validator(mode="after")
    def _check(self):
        self._forbid_unless(self.engine == "vllm", ["vllm_kwargs"], "scale.engine is not 'vllm'")
        if self.engine == "vllm":  # before any model loads: one line on how to get it
            from turnrl.engine.vllm import vllm_missing

            if vllm_missing():
                raise ValueError(vllm_missing())
        self._forbid_unless(self.rollout_workers > 0 or self.learner_workers > 1, ["ray_address"],
                            "no Ray workers are asked for (rollout_workers = 0, learner_workers = 1)")
        self._forbid_unless(self.max_staleness > 0, ["is_cap"], "scale.max_staleness is 0 (synchronous: the "
                                                                "behaviour policy is the learner itself)")
        if self.engine == "vllm" and self.max_staleness > 0 and self.rollout_workers == 0:
            raise ValueError("max_staleness > 0 with engine = 'vllm' needs rollout_workers > 0: asynchronous "
                             "rollouts in this process would need a second vLLM engine beside the first")
        return self


class LogConfig(Section):
    progress: bool = Field(True, description="progress bar on the console")
    tensorboard: bool = Field(False, description="also write TensorBoard event files")


class RunConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    rollout: RolloutSection = Field(default_factory=RolloutSection)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    scale: ScaleConfig = Field(default_factory=ScaleConfig)

    @model_validator(mode="after")
    def _check(self):
        if "task" in self.model_fields_set and not _uses_tasks(self.env.name):
            raise ValueError(f"task: env {self.env.name!r} takes no task source, so the [task] section would be "
                             "ignored; configure it with env.kwargs")
        from turnrl.algos.base import get_algorithm

        algo = get_algorithm(self.algo.name)
        if self.scale.max_staleness > 0 and not algo.corrects_staleness:
            raise ValueError(f"scale.max_staleness = {self.scale.max_staleness}: algorithm {self.algo.name!r} has no "
                             "correction for episodes sampled by an older policy; use max_staleness = 0")
        n = self.scale.learner_workers
        if n > 1 and algo.make_critic is not None:
            raise ValueError(f"scale.learner_workers = {n}: algorithm {self.algo.name!r} trains a critic, which the "
                             "FSDP learner does not shard or synchronise; use learner_workers = 1")
        if n > 1 and self.model.finetune == "lora":
            raise ValueError(f"scale.learner_workers = {n}: the FSDP learner trains full weights only "
                             "(model.finetune = 'lora' is one-process code); use learner_workers = 1")
        if n > 1 and self.model.dtype != "fp32":
            raise ValueError(f"scale.learner_workers = {n}: the FSDP learner trains in fp32 only (model.dtype = "
                             f"{self.model.dtype!r}); use learner_workers = 1 or dtype = 'fp32'")
        if "pairs" in algo.needs and self.rollout.group_size % 2:
            raise ValueError(f"rollout.group_size = {self.rollout.group_size} is odd: algorithm {self.algo.name!r} "
                             "trains pairs of episodes of a group, so the group size must be even")
        return self


def _uses_tasks(env_name: str) -> bool:
    from turnrl.envs.registry import uses_tasks

    try:
        return uses_tasks(env_name)
    except ValueError:
        return True  # an unknown env is reported where it is built, by its name, not as a misplaced [task]


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        field = re.match(r"([a-z_]+): ", msg)  # a section's check naming its field: section.field
        if len(e["loc"]) == 1 and field:
            loc, msg = f"{loc}.{field[1]}", msg[field.end():]
        lines.append(f"{source}: {loc or '(top level)'}: {msg}")
    return "\n".join(lines)


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--train.lr", "1e-4", ...]`` -> ``{"train": {"lr": 1e-4}}``; values are parsed
    as JSON when they can be (numbers, booleans, lists), else kept as strings."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        key = args[i]
        if not key.startswith("--") or "." not in key:
            raise ConfigError(f"override {key!r} must look like --section.key value")
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"override {key} has no value")
            value = args[i + 1]
            i += 2
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = _number(value)
        node = out
        parts = key[2:].split(".")
        for depth, p in enumerate(parts[:-1], 1):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {'.'.join(parts[:depth])} was already given a value")
        node[parts[-1]] = parsed
    return out


def _number(text: str) -> Any:
    """A number JSON does not read (``.7``, ``5.``, ``+1``, ``1_000``) as one; other text as it is."""
    if re.fullmatch(r"[+-]?(\d[\d_]*)?\.?\d*([eE][+-]?\d+)?", text) and any(c.isdigit() for c in text):
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                pass
    return text


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} {'is a directory' if p.is_dir() else 'not found'}")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: invalid TOML: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        source = str(p)
    if overrides:
        data = _merge(data, parse_overrides(overrides))
        source += " + command-line overrides"
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from None
