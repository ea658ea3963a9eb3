"""Asynchronous against synchronous rollouts on the UFO demo task: the same config trained
twice, with ``scale.max_staleness`` 0 and then 1 (rollouts of step n+1 sampled while step
n trains), one process after the other. Writes step time, the time the trainer waited
for rollouts, staleness and held-out Succ@k of both to bench/results/async.json.

    python bench/async.py [--steps N] [--eval-tasks N] [--config FILE] [--section.key value ...]

Defaults: the demo config (configs/ufo_demo.toml) in fp32, as its JSON has always been run
(``--model.dtype bf16`` for the demo's own dtype), with 8 steps and 100 held-out tasks, so
the pair takes about a quarter of an hour on 2 cores; --steps 20 --eval-tasks 200 is the
full demo.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from turnrl.config import load_config
from turnrl.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent


def run(config: str, staleness: int, steps: int, eval_tasks: int, out_dir: Path, overrides: list[str]) -> dict:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    cfg = load_config(config, ["--train.steps", str(steps), "--eval.num_tasks", str(eval_tasks), "--eval.before", "false",
                               "--train.out_dir", str(out_dir), "--log.progress", "false",
                               "--scale.max_staleness", str(staleness), *overrides])
    t0 = time.time()
    summary = Trainer(cfg).train()
    wall = time.time() - t0
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    after = summary["eval_after"]
    k = cfg.env.max_turns
    return {
        "max_staleness": staleness,
        "step_seconds_mean": statistics.mean(r["step_seconds"] for r in train),
        "rollout_wait_seconds_mean": statistics.mean(r["rollout_seconds"] for r in train),
        "train_seconds": sum(r["step_seconds"] for r in train),
        "wall_seconds": wall,
        "staleness_max": max(r["staleness_max"] for r in train),
        "staleness_mean": statistics.mean(r["staleness_mean"] for r in train),
        "mean_train_reward": statistics.mean(r["reward"] for r in train),
        "held_out": {f"succ@{i}": after[f"succ@{i}"] for i in range(1, k + 1)}
        | {"pass@5": after.get("pass@5"), "distinct_instances": after.get("distinct_instances")},
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--eval-tasks", type=int, default=100)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "async.json"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "ufo_demo.toml"))
    args, overrides = ap.parse_known_args(argv)
    overrides = ["--model.dtype", "fp32"] + overrides  # async.json's runs are fp32 (the demo config samples in bf16)
    runs = [run(args.config, s, args.steps, args.eval_tasks, ROOT / "runs" / f"bench_async_{s}", overrides)
            for s in (0, 1)]
    sync, asyn = runs
    result = {
        "config": args.config, "overrides": overrides, "steps": args.steps, "held_out_tasks": args.eval_tasks,
        "torch_threads": torch.get_num_threads(), "machine_cpus": os.cpu_count(),
        "synchronous": sync, "asynchronous": asyn,
        "step_time_ratio": asyn["step_seconds_mean"] / sync["step_seconds_mean"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
