"""The training loop: collect -> advantages -> filter -> update -> log -> checkpoint."""
from __future__ import annotations

import copy
import json
import sys
import math
import random
import time
from dataclasses import replace
from collections import defaultdict
from pathlib import Path

import torch

from turnrl import checkpoint
from turnrl.algos import Aux, LossInputs, get_algorithm
from turnrl.algos.base import check_needs, token_turn_ids
from turnrl.algos.logprobs import gold_beliefs, group_logprobs
from turnrl.algos.masks import apply_masks, token_keep
from turnrl.build import build_engine, build_policy, env_factory, episode_turns
from turnrl.config import RunConfig
from turnrl.engine.base import SamplingParams
from turnrl.evaluate import EngineRunner, evaluate
from turnrl.logging import RunLogger
from turnrl.metrics import episode_metrics
from turnrl.recipes import apply_turn_penalty, branch_points, check_recipes, turn_cap
from turnrl.rollout import RolloutConfig, collect, context_fields, require_correct
from turnrl.types import Episode, Turn


def _pad(rows: list[torch.Tensor], value: float = 0.0) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=value)  # (B, T_max)


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (one line for the console)."""


class Trainer:
    def __init__(self, cfg: RunConfig, model=None, tokenizer=None):
        self.cfg = cfg
        torch.manual_seed(cfg.train.seed)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        # Envs first: a bad data file is reported before minutes go into loading a model.
        self.make_env = env_factory(cfg, "train")
        env_factory(cfg, "eval")
        self.max_turns = episode_turns(cfg)
        check_recipes(cfg, self.max_turns)
        self.algo = get_algorithm(cfg.algo.name)
        check_needs(self.algo, self.make_env, cfg.env.name)  # before minutes go into loading a model
        for setting in ("rise_groups", "turn_penalty"):
            if getattr(cfg.rollout, setting):
                self._probe_correct(f"rollout.{setting}")
        self._capped_envs: dict = {}  # turn cap -> training env constructor
        if model is None:
            model, tokenizer = build_policy(cfg)
        self.model, self.tok = model, tokenizer
        self.engine, self.chat = build_engine(model, tokenizer, cfg.scale.engine, cfg.scale.vllm_kwargs)
        self.critic = self.algo.make_critic(model, cfg.algo) if self.algo.make_critic else None
        self.phases = self.algo.phases
        self._audited = False
        self.ref = None
        if self.algo.needs_ref(cfg.algo) and cfg.model.finetune == "full":
            self.ref = copy.deepcopy(model).eval().requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.train.lr, betas=cfg.train.betas, weight_decay=cfg.train.weight_decay,
                                     fused=True)  # one kernel for all parameters (CPU and CUDA)
        warm = cfg.train.warmup_steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.run_dir = Path(cfg.train.out_dir)
        self.step, self.data_pos = 0, 0
        self.compute_dtype = torch.bfloat16 if cfg.model.dtype == "bf16" else None

    def _probe_correct(self, setting: str) -> None:
        """Settings that pick or reward episodes by correctness need ``Step.correct``: play
        one turn of a training instance and refuse, before the model loads, if it is None."""
        env = self.make_env()
        env.reset(0)
        step = env.step("0")
        probe = Episode([Turn([], [], [], info=step.record() if hasattr(step, "record") else dict(step.info))], 0)
        require_correct([probe], setting, self.cfg.env.name)

    # -- rollouts ------------------------------------------------------------------------
    def rollout_config(self, step: int) -> RolloutConfig:
        r = self.cfg.rollout
        sp = SamplingParams(r.temperature, r.top_p, r.top_k, r.max_new_tokens, seed=self.cfg.train.seed * 100_003 + step)
        return RolloutConfig(sp, r.max_context, r.retry_temperature, **context_fields(r))

    def train_env_maker(self, step: int):
        """Constructor of training envs at ``step``: the env's cap, or the cap
        ``rollout.max_turns_schedule`` sets from that step on (WMAct annealing)."""
        cap = turn_cap(self.cfg.rollout.max_turns_schedule, step, self.max_turns)
        if cap == self.max_turns:
            return self.make_env
        if cap not in self._capped_envs:
            self._capped_envs[cap] = env_factory(self.cfg, "train", max_turns=cap)
        return self._capped_envs[cap]

    def collect(self, step: int) -> list[Episode]:
        r = self.cfg.rollout
        make_env = self.train_env_maker(step)
        seeds = [self.data_pos + i for i in range(r.prompts_per_step)]
        envs = [make_env() for _ in range(r.prompts_per_step * r.group_size)]
        all_seeds = [s for s in seeds for _ in range(r.group_size)]
        eps = collect(envs, all_seeds, all_seeds, self.engine, self.chat, self.rollout_config(step))
        extra = []
        if r.rise_groups:
            extra += self.collect_rise(step, eps)
        if r.branch_groups:
            extra += self.collect_branches(step, eps)
        eps += extra
        if r.turn_penalty:
            require_correct(eps, "rollout.turn_penalty", self.cfg.env.name)
            apply_turn_penalty(eps, r.turn_penalty)
        return eps

    def collect_rise(self, step: int, eps: list[Episode]) -> list[Episode]:
        """RISE-style groups (arXiv 2407.18219): start ``rise_groups`` extra groups from the
        policy's own wrong-but-valid first answers, so retries get a learning signal even
        when first attempts mostly succeed. The replayed first answer is context only.
        Group ids -1 .. -rise_groups."""
        r = self.cfg.rollout
        starts, seen = [], set()
        for ep in eps:
            t0 = ep.turns[0]
            if not t0.info.get("correct") and t0.info.get("valid") and len(ep.turns) > 1 and ep.group_id not in seen:
                seen.add(ep.group_id)
                starts.append((ep.group_id, [t0.text]))
            if len(starts) == r.rise_groups:
                break
        return self._collect_from_prefixes(step, starts, first_gid=-1, seed_offset=50_000)

    def collect_branches(self, step: int, eps: list[Episode]) -> list[Episode]:
        """Branch groups (REFUEL, arXiv 2410.04612): up to ``branch_groups`` sampled episodes
        with >= 2 turns, one per group, each cut at a turn h drawn uniformly from
        [1, turns - 1] (seeded by the train seed and the step); its first h replies are
        replayed as frozen context and a new group samples the rest, so its episodes share
        the prefix up to turn h and diverge after it. Group ids follow RISE's."""
        r = self.cfg.rollout
        rng = random.Random(self.cfg.train.seed * 100_003 + step)
        starts = [(ep.seed, [t.text for t in ep.turns[:h]]) for ep, h in branch_points(eps, r.branch_groups, rng)]
        return self._collect_from_prefixes(step, starts, first_gid=-(1 + r.rise_groups), seed_offset=70_000)

    def _collect_from_prefixes(self, step: int, starts: list[tuple[int, list[str]]], first_gid: int,
                               seed_offset: int) -> list[Episode]:
        """One group of ``group_size`` per ``(env seed, replayed replies)``, group ids
        ``first_gid, first_gid - 1, ...`` (negative: kept out of the step's metrics)."""
        if not starts:
            return []
        r = self.cfg.rollout
        make_env = self.train_env_maker(step)
        envs = [make_env() for _ in range(len(starts) * r.group_size)]
        seeds = [s for s, _ in starts for _ in range(r.group_size)]
        gids = [first_gid - i for i in range(len(starts)) for _ in range(r.group_size)]  # own groups
        prefixes = [list(texts) for _, texts in starts for _ in range(r.group_size)]
        cfg = self.rollout_config(step)
        cfg = replace(cfg, sampling=replace(cfg.sampling, seed=cfg.sampling.seed + seed_offset))
        return collect(envs, seeds, gids, self.engine, self.chat, cfg, prefixes=prefixes)

    # -- update --------------------------------------------------------------------------
    def update(self, eps: list[Episode]) -> dict[str, float]:
        """Masks -> advantages -> ``ppo_epochs`` x ``minibatches`` optimizer steps (or one per
        phase). Advantages use every episode (a masked trajectory's reward still counts in
        its group); only kept turns are trained."""
        acfg, algo = self.cfg.algo, self.algo
        keep, stats = apply_masks(eps, acfg, acfg.masks)
        stats = dict(stats)
        train = [i for i, e in enumerate(eps) if e.num_action_tokens > 0 and any(keep[i])]
        stats.update({"episodes_masked": float(len(eps) - len(train)), "episodes_trained": float(len(train))})
        if not train:
            stats["update_skipped"] = 1.0
            return stats
        stats["update_skipped"] = 0.0
        self._audited = False
        aux = Aux(n_sampled=len(eps))
        if "belief" in algo.needs:
            aux.beliefs = gold_beliefs(self.model, eps, self.chat, self.cfg.train.logprob_chunk)
        multi = acfg.ppo_epochs * acfg.minibatches > 1 or self.phases is not None
        if multi or self.critic is not None:
            # the behaviour policy: the learner before this update (ratio exactly 1 at the start)
            aux.old_logprobs, feats = self._learner_pass(eps, train, want_hidden=self.critic is not None)
            if self.critic is not None:
                stats.update(self.critic.prepare(eps, train, feats, aux, acfg))
        sums: dict[str, float] = defaultdict(float)
        grad_norms, n_steps = [], 0
        for phase in (self.phases(eps, acfg) if self.phases is not None else [None]):
            aux.phase = phase
            if phase is not None:
                aux.logprobs, _ = self._learner_pass(eps, train, want_hidden=False)
            adv = algo.advantages(eps, acfg, aux)
            for _ in range(acfg.ppo_epochs):
                for mb in self._minibatches(eps, train):
                    gn, part = self._optimizer_step(eps, mb, adv, keep, aux)
                    self._audited = True
                    grad_norms.append(gn)
                    n_steps += 1
                    for k, v in part.items():
                        sums[k] += v
        if self.critic is not None:
            stats.update(self.critic.update(acfg))
        self.engine.load_weights(self.model)
        n_tok = max(1.0, sums["tokens"])
        stats.update({
            "loss": sums["loss"] / max(1, n_steps), "grad_norm": max(grad_norms), "lr": self.sched.get_last_lr()[0],
            "kl": sums["kl"] / n_tok, "entropy": sums["entropy"] / n_tok, "clip_frac": sums["clipped"] / n_tok,
            "ratio_mean": sums["ratio"] / n_tok, "trained_tokens": sums["tokens"] / max(1, n_steps) * 1.0,
            "optimizer_steps": float(n_steps), "nan_skipped": float(sums["nan_skipped"] > 0),
        })
        if sums["audit_tokens"]:  # sampler vs learner log-probs of the trained tokens, before any update
            stats["sampler_drift_mean"] = sums["audit_sum"] / sums["audit_tokens"]
            stats["sampler_drift_max"] = sums["audit_max"]
        return stats

    def _minibatches(self, eps: list[Episode], train: list[int]) -> list[list[int]]:
        """Whole groups, split into ``minibatches`` contiguous chunks of near-equal size."""
        groups: dict[int, list[int]] = {}
        for i in train:
            groups.setdefault(eps[i].group_id, []).append(i)
        glist = list(groups.values())
        n = self._n_minibatches = min(self.cfg.algo.minibatches, len(glist))
        bounds = [round(k * len(glist) / n) for k in range(n + 1)]
        return [[i for g in glist[bounds[k]:bounds[k + 1]] for i in g] for k in range(n)]

    def _optimizer_step(self, eps, idx: list[int], adv, keep, aux: Aux) -> tuple[float, dict[str, float]]:
        acfg = self.cfg.algo
        sub = [eps[i] for i in idx]
        n_tokens = sum(int(self._token_mask(eps[i], keep[i], aux.phase).sum()) for i in idx)
        norm = self.algo.norm(sub, acfg, round(aux.n_sampled / self._n_minibatches), n_tokens)
        agg = self.algo.agg(acfg)
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        sums: dict[str, float] = defaultdict(float)
        by_group: dict[int, list[int]] = {}
        for i in idx:
            by_group.setdefault(eps[i].group_id, []).append(i)
        glist = list(by_group.values())
        mg = self.cfg.train.micro_groups
        for g in range(0, len(glist), mg):
            micro = [i for grp in glist[g:g + mg] for i in grp]
            loss, part = self._micro_loss(eps, micro, adv, keep, aux, agg, norm)
            loss.backward()
            for k, v in part.items():
                sums[k] = max(sums[k], v) if k == "audit_max" else sums[k] + v
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.train.max_grad_norm))
        if not (math.isfinite(sums["loss"]) and math.isfinite(grad_norm)):
            self.opt.zero_grad(set_to_none=True)  # NaN/inf guard: skip the update, keep the run
            sums["nan_skipped"] += 1
        else:
            self.opt.step()
        self.sched.step()
        return grad_norm, sums

    def _micro_loss(self, eps, micro: list[int], adv, keep, aux: Aux, agg: str, norm: float):
        sub = [eps[i] for i in micro]
        chunk = self.cfg.train.logprob_chunk
        with torch.autocast("cpu", dtype=self.compute_dtype or torch.float32, enabled=self.compute_dtype is not None):
            lps, ents = group_logprobs(self.model, sub, chunk, with_entropy=True)
        sampler = [torch.tensor([x for t in e.live_turns for x in t.action_logprobs]) for e in sub]
        if aux.old_logprobs is not None:
            old = [aux.old_logprobs[i] for i in micro]
        else:  # one epoch, one minibatch: the behaviour policy is the learner itself (ratio 1)
            old = [lp.detach() for lp in lps]
        tmask = [self._token_mask(e, keep[i], aux.phase) for e, i in zip(sub, micro)]
        mask = _pad(tmask)
        x = LossInputs(
            episodes=sub, logprobs=_pad(lps), old_logprobs=_pad(old), advantages=_pad([adv[i] for i in micro]),
            mask=mask, turn_ids=_pad([token_turn_ids(e) for e in sub], -1), agg=agg, norm=norm,
            ref_logprobs=_pad(self._ref_logprobs(sub)) if self.algo.needs_ref(self.cfg.algo) else None,
        )
        loss, extra = self.algo.loss(x, self.cfg.algo)
        with torch.no_grad():
            part = {"loss": float(loss), "tokens": float(mask.sum()), "entropy": float(sum(
                (e * m).sum() for e, m in zip(ents, tmask))), **extra}
            if not self._audited:  # token audit: only the first pass sees the sampler's policy
                diff = [(lp.detach() - s).abs() for lp, s in zip(lps, sampler) if len(s) == len(lp) and len(s)]
                if diff:
                    d = torch.cat(diff)
                    part.update({"audit_sum": float(d.sum()), "audit_tokens": float(d.numel()), "audit_max": float(d.max())})
        return loss, part

    @staticmethod
    def _token_mask(ep: Episode, keep_turns: list[bool], phase: int | None) -> torch.Tensor:
        """Trained tokens of ``ep``: kept turns, and only turn ``phase`` during a phase."""
        m = token_keep(ep, keep_turns)
        return m & (token_turn_ids(ep) == phase) if phase is not None else m

    @torch.no_grad()
    def _learner_pass(self, eps, idx: list[int], want_hidden: bool):
        """Learner log-probs (and hidden states) of the trained tokens of ``eps[idx]``, no grad;
        a list over all episodes (None where not computed)."""
        out: list = [None] * len(eps)
        feats: list = [None] * len(eps)
        self.model.eval()
        by_group: dict[int, list[int]] = {}
        for i in idx:
            by_group.setdefault(eps[i].group_id, []).append(i)
        for members in by_group.values():
            res = group_logprobs(self.model, [eps[i] for i in members], self.cfg.train.logprob_chunk,
                                 return_hidden=want_hidden)
            for k, i in enumerate(members):
                out[i] = res[0][k]
                if want_hidden:
                    feats[i] = res[2][k]
        return out, feats

    @torch.no_grad()
    def _ref_logprobs(self, eps):
        if self.ref is not None:
            return group_logprobs(self.ref, eps, self.cfg.train.logprob_chunk)[0]
        with self.model.disable_adapter():  # LoRA: the frozen base is the reference
            return group_logprobs(self.model, eps, self.cfg.train.logprob_chunk)[0]

    # -- checkpoints ---------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        state = {"model": {k: v for k, v in self.model.state_dict().items()}, "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "data_pos": self.data_pos,
                 "config": self.cfg.model_dump(mode="json")}
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
        return checkpoint.save(self.run_dir / "checkpoints", self.step, state, self.cfg.train.keep_checkpoints)

    def resume(self) -> bool:
        path = checkpoint.latest(self.run_dir / "checkpoints")
        if path is None:
            return False
        state = checkpoint.load(path)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step, self.data_pos = state["step"], state["data_pos"]
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
        self.engine.load_weights(self.model)
        return True

    def save_final(self) -> Path:
        out = self.run_dir / "final"
        tmp = self.run_dir / ".tmp_final"
        model = self.model
        if self.cfg.model.finetune == "lora":
            model = copy.deepcopy(self.model).merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True)
        self.tok.save_pretrained(tmp)
        if out.exists():
            import shutil

            shutil.rmtree(out)
        tmp.rename(out)
        return out

    # -- loop ----------------------------------------------------------------------------
    def train(self, resume: bool = False) -> dict:
        cfg = self.cfg
        if not resume and ((self.run_dir / "metrics.jsonl").exists() or (self.run_dir / "checkpoints").exists()):
            raise RunDirError(f"train.out_dir {self.run_dir} already holds a run: pass --resume to continue it, "
                              "or choose another train.out_dir (or delete the directory)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.resume() if resume else False
        if resume and not resumed:
            print(f"turnrl: --resume: no checkpoint in {self.run_dir / 'checkpoints'}; starting at step 0",
                  file=sys.stderr)
        log = RunLogger(self.run_dir, cfg, truncate_after=self.step if resumed else None)
        summary: dict = {}
        try:
            if cfg.eval.before and not resumed:
                summary["eval_before"] = self.run_eval(log)
            elif cfg.eval.before:
                summary["eval_before"] = self._saved_eval(0)
            progress = log.progress(cfg.train.steps, self.step)
            while self.step < cfg.train.steps:
                t0 = time.time()
                eps = self.collect(self.step)
                t_roll = time.time() - t0
                self.data_pos += cfg.rollout.prompts_per_step
                stats = self.update(eps)
                self.step += 1
                dt = time.time() - t0
                tokens = sum(e.num_tokens for e in eps)
                row = {**episode_metrics([e for e in eps if e.group_id >= 0], self.max_turns), **stats,
                       "rollout_seconds": t_roll, "step_seconds": dt, "tokens_per_second": tokens / dt}
                log.log("train", self.step, row)
                progress.advance(row)
                if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
                    self.save_checkpoint()
                if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < cfg.train.steps:
                    self.run_eval(log)
            progress.close()
            every = cfg.train.checkpoint_every
            if cfg.train.steps > 0 and not (every and self.step % every == 0):
                self.save_checkpoint()  # the last step, unless it was just saved
            summary["final_model"] = str(self.save_final())
            summary["eval_after"] = self.run_eval(log)
        finally:
            log.close()
        summary["report"] = self.write_report()
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def write_report(self) -> str | None:
        """The run's report (``turnrl report`` builds the same). A failure here costs no
        result: checkpoints, the final model and the eval files are already on disk."""
        from turnrl.report import build_report
        from turnrl.results import ResultsError

        try:
            return str(build_report(self.run_dir))
        except ResultsError as e:  # e.g. a run with no evaluation at all
            print(f"turnrl: no report for {self.run_dir}: {e}", file=sys.stderr)
            return None

    def _saved_eval(self, step: int) -> dict | None:
        """Metrics of an evaluation an earlier (interrupted) process of this run saved."""
        from turnrl.results import ResultsError, load_eval

        try:
            return load_eval(self.run_dir / "evals" / f"step_{step:06d}").metrics
        except (ResultsError, OSError):
            return None

    def run_eval(self, log: RunLogger) -> dict:
        """The same evaluation as ``turnrl eval``; results in ``evals/step_N``."""
        result = evaluate(EngineRunner(self.engine, self.chat, name=f"{self.cfg.model.name} @ step {self.step}"),
                          self.cfg, step=self.step)
        result.save(self.run_dir / "evals" / f"step_{self.step:06d}")
        log.log("eval", self.step, result.metrics)
        return result.metrics
