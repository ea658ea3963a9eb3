"""Train the default model with a config (default: the UFO demo, configs/ufo_demo.toml)
and write before/after held-out metrics to bench/results/<config name>.json, with what
the policy did on the held-out episodes (``behaviour``: its first answers, how many
episodes repeat an answer, its most common answer sequences), read from each
evaluation's episodes.jsonl.

    python bench/ufo_demo.py [CONFIG] [--section.key value ...] [--out PATH]
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from turnrl.config import load_config
from turnrl.results import load_eval
from turnrl.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
KEYS = ["unique_answer_ratio", "multi_turn_gain", "retry_accuracy", "mean_attempts_to_solve", "invalid_format_rate",
        "self_correction_rate", "repeated_answer_rate", "reward"]


def pick(m: dict, k_max: int, pass_k: int) -> dict:
    out = {"succ_at_k": {str(k): m[f"succ@{k}"] for k in range(1, k_max + 1)}, f"pass_at_{pass_k}": m.get(f"pass@{pass_k}")}
    out.update({k: m[k] for k in KEYS})
    return out


def behaviour(records: list[dict], top: int = 5) -> dict:
    """What the policy did, from an evaluation's episode records (episodes.jsonl): the
    distribution of first answers, the episodes that give one answer twice, and the most
    common answer sequences and three-answer openings with their counts. A turn without
    a parseable answer shows as "-"."""
    def answers(rec: dict) -> list[str]:
        return [("-" if t.get("answer") is None or not t.get("valid", True) else str(t["answer"])) for t in rec["turns"]]

    def ranked(counts: Counter) -> list[dict]:
        rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        return [{"answers": list(seq), "episodes": n} for seq, n in rows]

    seqs = [answers(r) for r in records]
    given = [[a for a in s if a != "-"] for s in seqs]
    return {
        "episodes": len(records),
        "first_answer": dict(sorted(Counter(s[0] for s in seqs if s).items(), key=lambda kv: (-kv[1], kv[0]))),
        "episodes_repeating_an_answer": sum(len(g) != len(set(g)) for g in given),
        "most_common_sequences": ranked(Counter(tuple(s) for s in seqs)),
        "most_common_openings": ranked(Counter(tuple(s[:3]) for s in seqs if len(s) >= 3)),
    }


def main(argv: list[str]) -> int:
    out = None
    if "--out" in argv:  # where the JSON goes (default: bench/results/<config name>.json)
        i = argv.index("--out")
        out, argv = Path(argv[i + 1]), argv[:i] + argv[i + 2:]
    config = argv[0] if argv and not argv[0].startswith("--") else str(ROOT / "configs" / "ufo_demo.toml")
    overrides = argv[1:] if argv and not argv[0].startswith("--") else argv
    cfg = load_config(config, ["--log.progress", "false", *overrides])
    run_dir = Path(cfg.train.out_dir)
    if run_dir.exists():  # a benchmark is a fresh run: an earlier one in the same directory goes
        print(f"ufo_demo: removing the earlier run in {run_dir}", file=sys.stderr)
        shutil.rmtree(run_dir)
    t0 = time.time()
    summary = Trainer(cfg).train()
    total = (time.time() - t0) / 60
    before, after = summary["eval_before"], summary["eval_after"]
    k, pk = cfg.env.max_turns, cfg.eval.pass_k
    result = {
        "torch_threads": torch.get_num_threads(), "machine_cpus": os.cpu_count(),
        "config": config, "overrides": overrides, "model": cfg.model.name, "steps": cfg.train.steps,
        "held_out_tasks": cfg.eval.num_tasks, "eval_decoding": "greedy" if cfg.eval.temperature == 0 else f"T={cfg.eval.temperature}",
        "pass_k_temperature": cfg.eval.pass_temperature,
        "before": pick(before, k, pk), "after": pick(after, k, pk),
        "train_minutes": round(total - (before["eval_seconds"] + after["eval_seconds"]) / 60, 2),
        "total_minutes": round(total, 2),
        "model_dtype": cfg.model.dtype,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),  # Linux: KiB
        "behaviour": {when: behaviour(load_eval(Path(cfg.train.out_dir) / "evals" / f"step_{step:06d}").episodes)
                      for when, step in (("before", 0), ("after", cfg.train.steps))},
    }
    result["targets"] = {
        "succ1_not_lower": after["succ@1"] >= before["succ@1"],
        "multi_turn_gain_up_10pts": after["multi_turn_gain"] - before["multi_turn_gain"] >= 0.10,
        f"succ{k}_above_pass{pk}": after[f"succ@{k}"] > after.get(f"pass@{pk}", 1.0),
        "unique_answer_ratio_up": after["unique_answer_ratio"] > before["unique_answer_ratio"],
    }
    out = out or ROOT / "bench" / "results" / f"{Path(config).stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
