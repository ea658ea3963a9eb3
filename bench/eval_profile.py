"""What the held-out arithmetic evaluation (configs/ufo_demo.toml's [eval]) feeds the model,
and how long that takes: every forward call of the in-process engine is counted and timed,
split into prefill calls (a chunk of more than one token for some row) and decode steps
(one token a row). The model runs in bf16 (what ``model.dtype = "bf16"`` evaluates with)
unless ``--dtype fp32``; ``--pass-n`` sets the Pass@5 samples per question (5, as when
issue 10 was filed; the config's default is 10). One evaluation per ``--batch-sizes`` value
(``eval.batch_size``: rows the engine decodes at once), on one loaded model: a decode step's
cost grows far slower than its rows on a CPU, so fewer, wider steps pay.

    python bench/eval_profile.py [--dtype bf16|fp32] [--pass-n 5] [--batch-sizes 64 128 200]
Writes bench/results/eval_profile.json (``--dtype fp32``: eval_profile_fp32.json).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from turnrl.build import build_engine
from turnrl.config import load_config
from turnrl.evaluate import EngineRunner, evaluate
from turnrl.models import load_model, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent


def profile(engine, chat, batch_size: int, pass_n: int) -> dict:
    """One evaluation at ``batch_size``: its seconds, and every forward call counted and timed."""
    calls = {"prefill": {"calls": 0, "tokens": 0, "seconds": 0.0}, "decode": {"calls": 0, "tokens": 0, "seconds": 0.0}}
    forward = engine._forward

    def counted(chunks):  # the engine's one entry to the model
        t0 = time.perf_counter()
        out = forward(chunks)
        c = calls["decode" if max(len(x) for x in chunks) == 1 else "prefill"]
        c["calls"] += 1
        c["tokens"] += sum(len(x) for x in chunks)
        c["seconds"] += time.perf_counter() - t0
        return out

    engine._forward = counted
    try:
        cfg = load_config(ROOT / "configs/ufo_demo.toml", ["--eval.pass_n", str(pass_n), "--eval.batch_size", str(batch_size)])
        result = evaluate(EngineRunner(engine, chat), cfg)
    finally:
        del engine._forward  # the class's method again
    total = result.metrics["eval_seconds"]
    for c in calls.values():
        c["seconds"] = round(c["seconds"], 2)
        c["tokens_per_second"] = round(c["tokens"] / max(c["seconds"], 1e-9), 1)
    return {
        "batch_size": batch_size, "episodes": len(result.episodes),
        "distinct_instances": int(result.metrics["distinct_instances"]), "eval_seconds": round(total, 2), "model_calls": calls,
        "outside_the_model_seconds": round(total - calls["prefill"]["seconds"] - calls["decode"]["seconds"], 2),
        "collapse_seconds": round(result.metrics.get("collapse_seconds", 0.0), 2),
        "succ@1": result.metrics["succ@1"], "succ@5": result.metrics["succ@5"], "pass@5": result.metrics.get("pass@5"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--pass-n", type=int, default=5, help="Pass@5 samples per question (default 5)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 200],
                    help="eval.batch_size values, one evaluation each (default 64 128 200)")
    a = ap.parse_args(argv)
    model = load_model("smollm2-135m")
    if a.dtype == "bf16":
        model = model.to(torch.bfloat16)
    engine, chat = build_engine(model, load_tokenizer("smollm2-135m"))
    runs = [profile(engine, chat, bs, a.pass_n) for bs in a.batch_sizes]
    out = {
        "model": "smollm2-135m (untrained)", "dtype": a.dtype, "threads": torch.get_num_threads(),
        "config": "configs/ufo_demo.toml", "pass_n": a.pass_n, "runs": runs,
    }
    path = ROOT / "bench" / "results" / ("eval_profile.json" if a.dtype == "bf16" else "eval_profile_fp32.json")
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
