"""Train the default model with a config (default: the UFO demo, configs/ufo_demo.toml)
and write before/after held-out metrics to bench/results/<config name>.json.

    python bench/ufo_demo.py [CONFIG] [--section.key value ...]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from turnrl.config import load_config
from turnrl.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
KEYS = ["unique_answer_ratio", "multi_turn_gain", "retry_accuracy", "mean_attempts_to_solve", "invalid_format_rate",
        "self_correction_rate", "repeated_answer_rate", "reward"]


def pick(m: dict, k_max: int, pass_k: int) -> dict:
    out = {"succ_at_k": {str(k): m[f"succ@{k}"] for k in range(1, k_max + 1)}, f"pass_at_{pass_k}": m.get(f"pass@{pass_k}")}
    out.update({k: m[k] for k in KEYS})
    return out


def main(argv: list[str]) -> int:
    config = argv[0] if argv and not argv[0].startswith("--") else str(ROOT / "configs" / "ufo_demo.toml")
    overrides = argv[1:] if argv and not argv[0].startswith("--") else argv
    cfg = load_config(config, ["--log.progress", "false", *overrides])
    t0 = time.time()
    summary = Trainer(cfg).train()
    total = (time.time() - t0) / 60
    before, after = summary["eval_before"], summary["eval_after"]
    k, pk = cfg.env.max_turns, cfg.eval.pass_k
    result = {
        "config": config, "overrides": overrides, "model": cfg.model.name, "steps": cfg.train.steps,
        "held_out_tasks": cfg.eval.num_tasks, "eval_decoding": "greedy" if cfg.eval.temperature == 0 else f"T={cfg.eval.temperature}",
        "pass_k_temperature": cfg.eval.pass_temperature,
        "before": pick(before, k, pk), "after": pick(after, k, pk),
        "train_minutes": round(total - (before["eval_seconds"] + after["eval_seconds"]) / 60, 2),
        "total_minutes": round(total, 2),
    }
    result["targets"] = {
        "succ1_not_lower": after["succ@1"] >= before["succ@1"],
        "multi_turn_gain_up_10pts": after["multi_turn_gain"] - before["multi_turn_gain"] >= 0.10,
        f"succ{k}_above_pass{pk}": after[f"succ@{k}"] > after.get(f"pass@{pk}", 1.0),
        "unique_answer_ratio_up": after["unique_answer_ratio"] > before["unique_answer_ratio"],
    }
    name = Path(config).stem
    out = ROOT / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
