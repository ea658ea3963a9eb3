"""The training loop: collect -> advantages -> filter -> update -> log -> checkpoint."""
from __future__ import annotations

import copy
import json
import sys
import math
import time
from dataclasses import replace
from collections import defaultdict
from pathlib import Path

import torch

from turnrl import checkpoint
from turnrl.algos import ALGORITHMS, aggregate, episode_returns, group_filter, kl_k3
from turnrl.algos.logprobs import group_logprobs
from turnrl.build import build_engine, build_policy, env_factory, episode_turns
from turnrl.config import RunConfig
from turnrl.engine.base import SamplingParams
from turnrl.evaluate import EngineRunner, evaluate
from turnrl.logging import RunLogger
from turnrl.metrics import episode_metrics
from turnrl.rollout import RolloutConfig, collect
from turnrl.types import Episode


def _pad(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # (B, T_max)


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
        if model is None:
            model, tokenizer = build_policy(cfg)
        self.model, self.tok = model, tokenizer
        self.engine, self.chat = build_engine(model, tokenizer)
        self.algo = ALGORITHMS[cfg.algo.name]
        self.ref = None
        if cfg.algo.kl_coef > 0 and cfg.model.finetune == "full":
            self.ref = copy.deepcopy(model).eval().requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.train.lr, betas=cfg.train.betas, weight_decay=cfg.train.weight_decay,
                                     fused=True)  # one kernel for all parameters (CPU and CUDA)
        warm = cfg.train.warmup_steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.run_dir = Path(cfg.train.out_dir)
        self.step, self.data_pos = 0, 0
        self.compute_dtype = torch.bfloat16 if cfg.model.dtype == "bf16" else None

    # -- rollouts ------------------------------------------------------------------------
    def rollout_config(self, step: int) -> RolloutConfig:
        r = self.cfg.rollout
        sp = SamplingParams(r.temperature, r.top_p, r.top_k, r.max_new_tokens, seed=self.cfg.train.seed * 100_003 + step)
        return RolloutConfig(sp, r.max_context, r.retry_temperature)

    def collect(self, step: int) -> list[Episode]:
        r = self.cfg.rollout
        seeds = [self.data_pos + i for i in range(r.prompts_per_step)]
        envs = [self.make_env() for _ in range(r.prompts_per_step * r.group_size)]
        all_seeds = [s for s in seeds for _ in range(r.group_size)]
        eps = collect(envs, all_seeds, all_seeds, self.engine, self.chat, self.rollout_config(step))
        if r.rise_groups:
            eps += self.collect_rise(step, eps)
        return eps

    def collect_rise(self, step: int, eps: list[Episode]) -> list[Episode]:
        """RISE-style groups (arXiv 2407.18219): start ``rise_groups`` extra groups from the
        policy's own wrong-but-valid first answers, so retries get a learning signal even
        when first attempts mostly succeed. The replayed first answer is context only."""
        r = self.cfg.rollout
        starts, seen = [], set()
        for ep in eps:
            t0 = ep.turns[0]
            if not t0.info.get("correct") and t0.info.get("valid") and len(ep.turns) > 1 and ep.group_id not in seen:
                seen.add(ep.group_id)
                starts.append((ep.group_id, t0.text))
            if len(starts) == r.rise_groups:
                break
        if not starts:
            return []
        envs = [self.make_env() for _ in range(len(starts) * r.group_size)]
        seeds = [s for s, _ in starts for _ in range(r.group_size)]
        gids = [-(1 + i) for i in range(len(starts)) for _ in range(r.group_size)]  # own groups
        prefixes = [[text] for _, text in starts for _ in range(r.group_size)]
        cfg = self.rollout_config(step)
        cfg = replace(cfg, sampling=replace(cfg.sampling, seed=cfg.sampling.seed + 50_000))
        return collect(envs, seeds, gids, self.engine, self.chat, cfg, prefixes=prefixes)

    # -- update --------------------------------------------------------------------------
    def update(self, eps: list[Episode]) -> dict[str, float]:
        acfg = self.cfg.algo
        returns = episode_returns(eps)
        adv = self.algo.advantages(eps, acfg)  # (N,)
        keep = group_filter(returns, [e.group_id for e in eps], acfg)
        kept = [(e, float(a)) for e, a, k in zip(eps, adv, keep) if k and e.num_action_tokens > 0]
        stats = {"episodes_filtered": float(len(eps) - int(keep.sum())), "episodes_trained": float(len(kept))}
        if not kept:
            stats["update_skipped"] = 1.0
            return stats
        mode, norm = self.algo.loss_agg(acfg), self.algo.norm([e for e, _ in kept], acfg)
        groups = defaultdict(list)
        for e, a in kept:
            groups[e.group_id].append((e, a))
        glist = list(groups.values())
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        sums = defaultdict(float)
        n_tok = 0
        for g in range(0, len(glist), self.cfg.train.micro_groups):
            micro = [x for grp in glist[g:g + self.cfg.train.micro_groups] for x in grp]
            loss, part = self._micro_loss(micro, mode, norm)
            loss.backward()
            for k, v in part.items():
                sums[k] += v
            n_tok += int(part["tokens"])
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.train.max_grad_norm))
        if not (math.isfinite(sums["loss"]) and math.isfinite(grad_norm)):
            self.opt.zero_grad(set_to_none=True)  # NaN/inf guard: skip the update, keep the run
            stats["nan_skipped"] = 1.0
        else:
            self.opt.step()
            stats["nan_skipped"] = 0.0
        self.sched.step()
        self.engine.load_weights(self.model)
        stats.update({
            "loss": sums["loss"], "grad_norm": grad_norm, "lr": self.sched.get_last_lr()[0],
            "kl": sums["kl"] / max(1, n_tok), "entropy": sums["entropy"] / max(1, n_tok),
            "clip_frac": sums["clipped"] / max(1, n_tok), "ratio_mean": sums["ratio"] / max(1, n_tok),
            "trained_tokens": float(n_tok),
        })
        return stats

    def _micro_loss(self, micro: list[tuple[Episode, float]], mode: str, norm: float):
        eps = [e for e, _ in micro]
        chunk = self.cfg.train.logprob_chunk
        with torch.autocast("cpu", dtype=self.compute_dtype or torch.float32, enabled=self.compute_dtype is not None):
            lps, ents = group_logprobs(self.model, eps, chunk, with_entropy=True)
        old = [torch.tensor([x for t in e.live_turns for x in t.action_logprobs]) for e in eps]
        logprobs, old_lp = _pad(lps), _pad(old)  # (B, T)
        mask = _pad([torch.ones(len(x), dtype=torch.bool) for x in lps])  # (B, T)
        advantages = torch.tensor([a for _, a in micro])[:, None].expand_as(logprobs)  # (B, T)
        token_loss, extra = self.algo.token_loss(logprobs, old_lp, advantages, self.cfg.algo)
        loss = aggregate(token_loss, mask, mode, norm)
        kl = torch.zeros_like(logprobs)
        if self.cfg.algo.kl_coef > 0:
            ref = self._ref_logprobs(eps)
            kl = kl_k3(logprobs, _pad(ref))
            loss = loss + self.cfg.algo.kl_coef * aggregate(kl, mask, mode, norm)
        with torch.no_grad():
            part = {
                "loss": float(loss), "tokens": float(mask.sum()), "kl": float((kl * mask).sum()),
                "entropy": float(sum(e.sum() for e in ents)), "clipped": float((extra["clipped"] & mask).sum()),
                "ratio": float((torch.exp(logprobs - old_lp) * mask).sum()),
            }
        return loss, part

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
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.resume() if resume else False
        log = RunLogger(self.run_dir, cfg, truncate_after=self.step if resumed else None)
        summary: dict = {}
        try:
            if cfg.eval.before and not resumed:
                summary["eval_before"] = self.run_eval(log)
            progress = log.progress(cfg.train.steps, self.step)
            while self.step < cfg.train.steps:
                t0 = time.time()
                eps = self.collect(self.step)
                t_roll = time.time() - t0
                self.data_pos += cfg.rollout.prompts_per_step
                stats = self.update(eps)
                self.step += 1
                dt = time.time() - t0
                tokens = sum(len(e.token_ids) for e in eps)
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

    def run_eval(self, log: RunLogger) -> dict:
        """The same evaluation as ``turnrl eval``; results in ``evals/step_N``."""
        result = evaluate(EngineRunner(self.engine, self.chat, name=f"{self.cfg.model.name} @ step {self.step}"),
                          self.cfg, step=self.step)
        result.save(self.run_dir / "evals" / f"step_{self.step:06d}")
        log.log("eval", self.step, result.metrics)
        return result.metrics
