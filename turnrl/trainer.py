"""The training loop: collect -> advantages -> filter -> update -> log -> checkpoint."""
from __future__ import annotations

import copy
import json
import random
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from turnrl import checkpoint
from turnrl.algos import get_algorithm
from turnrl.algos.base import check_needs
from turnrl.build import build_engine, build_policy, env_factory, episode_turns
from turnrl.chat import ChatFormat
from turnrl.config import RunConfig
from turnrl.engine.base import SamplingParams
from turnrl.evaluate import EngineRunner, evaluate
from turnrl.learner import Learner
from turnrl.logging import RunLogger
from turnrl.metrics import episode_metrics
from turnrl.recipes import apply_turn_penalty, branch_points, check_recipes, turn_cap
from turnrl.results import check_out_dir, holds_training_run
from turnrl.rollout import RolloutConfig, context_fields, require_correct
from turnrl.scale.sampler import LocalSampler, TrainEnvs
from turnrl.types import Episode, Turn


def _done(value) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (one line for the console)."""


#: what a resumed run may change: how long it trains, how it saves, evaluates, logs and scales
RESUME_MAY_CHANGE = ("train.steps", "train.checkpoint_every", "train.keep_checkpoints", "train.out_dir",
                     "train.threads", "eval.", "log.", "scale.")


def _check_resumable(saved: dict, now: dict, path) -> None:
    """A resumed run trains as the checkpoint's run did: one line naming every other field
    that differs, instead of a run that silently stops being the one it continues."""
    def flat(d: dict, prefix: str = "") -> dict:
        return {k: v for key, val in d.items()
                for k, v in (flat(val, f"{prefix}{key}.").items() if isinstance(val, dict) and key != "kwargs"
                             else [(f"{prefix}{key}", val)])}

    before, after = flat(saved), flat(now)
    # a field the checkpoint's config lacks was added since: it ran with that field's default
    changed = sorted(k for k in before if before[k] != after.get(k) and not k.startswith(RESUME_MAY_CHANGE))
    if changed:
        diff = "; ".join(f"{k} = {before[k]!r} there, {after.get(k)!r} here" for k in changed)
        fix = " ".join(f"--{k} '{json.dumps(before[k])}'" for k in changed)
        raise RunDirError(f"--resume: the checkpoint {path} was trained with other settings ({diff}); resume with "
                          f"them ({fix}; only train.steps, checkpointing, eval, log and scale may change), or start "
                          "a new train.out_dir")


class Trainer:
    def __init__(self, cfg: RunConfig, model=None, tokenizer=None):
        self.cfg = cfg
        check_out_dir(cfg.train.out_dir, "train.out_dir")  # before the model loads
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
        if cfg.scale.learner_workers > 1 or cfg.scale.rollout_workers:  # said before the model loads
            from turnrl.scale.ray_cluster import import_ray, probe

            import_ray("scale.rollout_workers > 0 or scale.learner_workers > 1")
            if cfg.scale.ray_address:
                probe(cfg.scale.ray_address)
        for setting in ("rise_groups", "turn_penalty"):
            if getattr(cfg.rollout, setting):
                self._probe_correct(f"rollout.{setting}")
        if model is None:
            model, tokenizer = build_policy(cfg)
        self.model, self.tok, self.chat = model, tokenizer, ChatFormat(tokenizer)
        if cfg.scale.learner_workers > 1:  # the update on an FSDP group; it copies its weights into self.model
            from turnrl.scale.fsdp import FSDPLearnerGroup

            self.learner = FSDPLearnerGroup(cfg, model, self.chat)
        else:
            self.learner = Learner(cfg, model, self.chat)  # model.dtype = "bf16": the model is bf16 from here
        # after the learner, so that the engine is built on the model in its training dtype (vLLM: bf16 too)
        self.engine, _ = build_engine(model, tokenizer, cfg.scale.engine, cfg.scale.vllm_kwargs)
        self.sampler = self._make_sampler()
        self._pool: ThreadPoolExecutor | None = None  # asynchronous rollouts (scale.max_staleness > 0)
        self._ahead: dict[int, Future] = {}  # step -> its episodes, sampled ahead of the update
        self._progress = None  # the training bar, paused while an evaluation shows its own
        self.run_dir = Path(cfg.train.out_dir)
        self.step, self.data_pos = 0, 0

    @property
    def critic(self):
        return self.learner.critic

    def _make_sampler(self):
        """Rollouts in this process (from the learner's own model; from a copy of it when
        they run ahead of the update), or on Ray rollout workers (``scale.rollout_workers``)."""
        sc = self.cfg.scale
        envs = TrainEnvs(self.cfg, self.max_turns)
        if sc.rollout_workers:
            from turnrl.scale.ray_rollout import RayRolloutPool

            return RayRolloutPool(self.cfg, envs, self.model, self.tok)
        if sc.max_staleness == 0:
            return LocalSampler(self.cfg, self.engine, self.chat, envs)
        engine, _ = build_engine(copy.deepcopy(self.model), self.tok)
        return LocalSampler(self.cfg, engine, self.chat, envs, own_weights=True)

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

    def turn_cap(self, step: int) -> int:
        """Turn cap of training episodes at ``step``: the env's, or the one
        ``rollout.max_turns_schedule`` sets from that step on (WMAct annealing)."""
        return turn_cap(self.cfg.rollout.max_turns_schedule, step, self.max_turns)

    def collect(self, step: int, data_pos: int | None = None, version: int | None = None) -> list[Episode]:
        """The episodes of ``step``: its groups (tasks from ``data_pos``, default the
        trainer's position), then any RISE and branch groups; sampled with the weights of
        ``version`` (default: the newest)."""
        r = self.cfg.rollout
        data_pos = self.data_pos if data_pos is None else data_pos
        seeds = [data_pos + i for i in range(r.prompts_per_step)]
        all_seeds = [s for s in seeds for _ in range(r.group_size)]
        eps = self.sampler.collect(self.turn_cap(step), all_seeds, all_seeds, self.rollout_config(step), version=version)
        extra = []
        if r.rise_groups:
            extra += self.collect_rise(step, eps, version)
        if r.branch_groups:
            extra += self.collect_branches(step, eps, version)
        eps += extra
        if r.turn_penalty:
            require_correct(eps, "rollout.turn_penalty", self.cfg.env.name)
            apply_turn_penalty(eps, r.turn_penalty)
        return eps

    def collect_rise(self, step: int, eps: list[Episode], version: int | None = None) -> list[Episode]:
        """RISE-style groups (arXiv 2407.18219): start ``rise_groups`` extra groups from the
        policy's own wrong-but-valid first answers, so retries get a learning signal even
        when first attempts mostly succeed. The replayed first answer is context only.
        Group ids -1 .. -rise_groups."""
        r = self.cfg.rollout
        starts, seen = [], set()
        for ep in eps:
            t0 = ep.turns[0]
            if (not t0.info.get("correct") and t0.info.get("valid") and len(ep.turns) > 1 and ep.group_id not in seen
                    and not ep.info.get("failed")):
                seen.add(ep.group_id)
                starts.append((ep.group_id, [t0.text]))
            if len(starts) == r.rise_groups:
                break
        return self._collect_from_prefixes(step, starts, first_gid=-1, seed_offset=50_000, version=version)

    def collect_branches(self, step: int, eps: list[Episode], version: int | None = None) -> list[Episode]:
        """Branch groups (REFUEL, arXiv 2410.04612): up to ``branch_groups`` sampled episodes
        with >= 2 turns, one per group, each cut at a turn h drawn uniformly from
        [1, turns - 1] (seeded by the train seed and the step); its first h replies are
        replayed as frozen context and a new group samples the rest, so its episodes share
        the prefix up to turn h and diverge after it. Group ids follow RISE's."""
        r = self.cfg.rollout
        rng = random.Random(self.cfg.train.seed * 100_003 + step)
        ok = [e for e in eps if not e.info.get("failed")]  # a failed env's episode starts no branch
        starts = [(ep.seed, [t.text for t in ep.turns[:h]]) for ep, h in branch_points(ok, r.branch_groups, rng)]
        return self._collect_from_prefixes(step, starts, first_gid=-(1 + r.rise_groups), seed_offset=70_000,
                                           version=version)

    def _collect_from_prefixes(self, step: int, starts: list[tuple[int, list[str]]], first_gid: int,
                               seed_offset: int, version: int | None = None) -> list[Episode]:
        """One group of ``group_size`` per ``(env seed, replayed replies)``, group ids
        ``first_gid, first_gid - 1, ...`` (negative: kept out of the step's metrics)."""
        if not starts:
            return []
        r = self.cfg.rollout
        seeds = [s for s, _ in starts for _ in range(r.group_size)]
        gids = [first_gid - i for i in range(len(starts)) for _ in range(r.group_size)]  # own groups
        prefixes = [list(texts) for _, texts in starts for _ in range(r.group_size)]
        cfg = self.rollout_config(step)
        cfg = replace(cfg, sampling=replace(cfg.sampling, seed=cfg.sampling.seed + seed_offset))
        return self.sampler.collect(self.turn_cap(step), seeds, gids, cfg, prefixes=prefixes, version=version)

    # -- update --------------------------------------------------------------------------
    def update(self, eps: list[Episode]) -> dict[str, float]:
        """The learner's update on ``eps`` (afterwards ``self.model`` holds the new weights, also
        when an FSDP group trained them); then the sampler gets them."""
        stats = self.learner.update(eps)
        if not stats.get("update_skipped"):
            self.engine.load_weights(self.model)
        self.sampler.publish(self.model, self.step + 1)
        bound = self.cfg.scale.drift_bound
        if "sampler_drift_mean" in stats:
            stats["drift_warning"] = float(stats["sampler_drift_mean"] > bound)
            if stats["drift_warning"]:
                print(f"turnrl: step {self.step + 1}: sampler and learner log-probs differ by "
                      f"{stats['sampler_drift_mean']:.3g} on average (max {stats['sampler_drift_max']:.3g}), above "
                      f"scale.drift_bound = {bound}", file=sys.stderr)
        return stats

    # -- checkpoints ---------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        state = {**self.learner.state_dict(), "data_pos": self.data_pos, "config": self.cfg.model_dump(mode="json")}
        if self._ahead:  # rollouts already sampled for later steps, by older weights: a resume trains on them too
            state["ahead"] = {s: f.result() for s, f in self._ahead.items()}
        return checkpoint.save(self.run_dir / "checkpoints", self.step, state, self.cfg.train.keep_checkpoints)

    def resume(self) -> bool:
        path = checkpoint.latest(self.run_dir / "checkpoints")
        if path is None:
            return False
        state = checkpoint.load(path)
        if "config" in state:
            _check_resumable(state["config"], self.cfg.model_dump(mode="json"), path)
        self.learner.load_state_dict(state)
        self.step, self.data_pos = state["step"], state["data_pos"]
        self.engine.load_weights(self.model)
        self.sampler.publish(self.model, self.step)
        self._ahead = {s: _done(eps) for s, eps in state.get("ahead", {}).items()}
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
        if not resume and holds_training_run(self.run_dir):
            raise RunDirError(f"train.out_dir {self.run_dir} already holds a run: pass --resume to continue it, "
                              "or choose another train.out_dir (or delete the directory)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.resume() if resume else False
        if resume and not resumed:
            print(f"turnrl: --resume: no checkpoint in {self.run_dir / 'checkpoints'}; starting at step 0",
                  file=sys.stderr)
        done = self.run_dir / "summary.json"
        if resumed and self.step >= cfg.train.steps and done.exists():
            print(f"turnrl: --resume: the run already finished at step {self.step} (train.steps = {cfg.train.steps}); "
                  "nothing to do (raise train.steps to train on)", file=sys.stderr)
            return json.loads(done.read_text())
        if resumed:
            print(f"turnrl: --resume: continuing from step {self.step} ({self.run_dir / 'checkpoints'})", file=sys.stderr)
        done.unlink(missing_ok=True)  # an earlier finish's summary: this run writes its own when it ends
        log = RunLogger(self.run_dir, cfg, truncate_after=self.step if resumed else None)
        log.machine(self.step, self.model)
        summary: dict = {}
        try:
            if cfg.eval.before and not resumed:
                summary["eval_before"] = self.run_eval(log)
            elif cfg.eval.before:
                summary["eval_before"] = self._saved_eval(0)
            progress = self._progress = log.progress(cfg.train.steps, self.step)
            while self.step < cfg.train.steps:
                t0 = time.time()
                eps = self.next_rollouts()
                t_roll = time.time() - t0
                self.data_pos += cfg.rollout.prompts_per_step
                stale = [self.step - e.policy_version for e in eps]
                stats = self.update(eps)
                self.step += 1
                dt = time.time() - t0
                tokens = sum(e.num_tokens for e in eps)
                scored = [e for e in eps if e.group_id >= 0 and not e.info.get("failed")]  # env errors: counted apart
                row = {**episode_metrics(scored, self.max_turns), **stats,
                       "staleness_mean": sum(stale) / max(1, len(stale)), "staleness_max": float(max(stale, default=0)),
                       "rollout_seconds": t_roll, "step_seconds": dt, "tokens_per_second": tokens / dt}
                if hasattr(self.sampler, "workers_restarted"):  # Ray rollout workers replaced so far (all steps)
                    row["workers_restarted"] = float(self.sampler.workers_restarted)
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
            self._stop_rollouts()
            self.learner.close()
        summary["report"] = self.write_report()
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def next_rollouts(self) -> list[Episode]:
        """The episodes of the current step. Synchronous (``scale.max_staleness`` = 0): sampled
        now, with the current weights. Otherwise the rollouts of the next ``max_staleness``
        steps are already being sampled on a background thread with the weights of the
        moment they were started, so the episodes of step n come from a policy at most
        ``max_staleness`` updates old (AReaL, arXiv 2505.24298)."""
        k, steps = self.cfg.scale.max_staleness, self.cfg.train.steps
        if k == 0:
            return self.collect(self.step)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="turnrl-rollouts")
        pps = self.cfg.rollout.prompts_per_step
        for s in range(self.step, min(self.step + k + 1, steps)):
            if s not in self._ahead:
                # the weights are named now: what is published while it waits does not leak in
                self._ahead[s] = self._pool.submit(self.collect, s, self.data_pos + (s - self.step) * pps,
                                                   self.sampler.latest)
        return self._ahead.pop(self.step).result()

    def _stop_rollouts(self) -> None:
        if self._pool is not None:
            for f in self._ahead.values():
                f.cancel()
            self._pool.shutdown(wait=True)
            self._pool, self._ahead = None, {}
        self.sampler.close()

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
        with self._progress.paused() if self._progress is not None else nullcontext():
            result = evaluate(EngineRunner(self.engine, self.chat, name=f"{self.cfg.model.name} @ step {self.step}"),
                              self.cfg, step=self.step)
        result.save(self.run_dir / "evals" / f"step_{self.step:06d}")
        log.log("eval", self.step, result.metrics)
        return result.metrics
