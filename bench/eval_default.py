"""Evaluate the default model (SmolLM2-135M-Instruct, untrained) with ``turnrl eval``'s
code on the retry arithmetic env and on GSM8K-format data, write each result with its
report (Markdown, PNG, HTML) under bench/results/eval/ (the arithmetic set once more with
the model in bf16, as ``model.dtype = "bf16"`` runs it), and time the same greedy
evaluation over HTTP (``turnrl serve`` + the OpenAI client) against the in-process engine.

    python bench/eval_default.py            # ~15 min on 2 cores
Summary: bench/results/eval_default.json
"""
from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

from turnrl.build import build_engine
from turnrl.config import load_config
from turnrl.endpoint import ChatEndpoint
from turnrl.evaluate import EngineRunner, evaluate
from turnrl.models import load_model, load_tokenizer
from turnrl.report import build_report

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
KEYS = ["self_correction_rate", "answer_change_rate", "repeated_answer_rate", "invalid_format_rate",
        "mean_attempts_to_solve", "tokens_per_episode", "latency_s_per_episode", "eval_seconds"]


def summary(r) -> dict:
    k, p = r.meta["max_turns"], r.meta["pass_k"]
    keys = [f"succ@{i}" for i in range(1, k + 1)] + ([f"pass@{p}"] if p else []) + KEYS
    return {"episodes": len(r.episodes), **{key: r.metrics[key] for key in keys if key in r.metrics},
            "intervals": {key: r.intervals[key] for key in keys if key in r.intervals}}


def http_vs_local(cfg, runner) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the server decodes as many rows at once as the in-process engine batches (like for like)
    proc = subprocess.Popen([sys.executable, "-m", "turnrl.cli", "serve", "smollm2-135m", "--port", str(port),
                             "--max-batch", str(cfg.eval.batch_size)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        local = evaluate(runner, cfg)
        # as many conversations in flight as the in-process engine batches (like for like), and 16
        like = min(cfg.eval.batch_size, cfg.eval.num_tasks)
        remote = {c: evaluate(ChatEndpoint(f"http://127.0.0.1:{port}/v1", concurrency=c), cfg) for c in (like, 16)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out = {"episodes": len(local.episodes), "in_process_seconds": local.metrics["eval_seconds"],
           "in_process_batch": cfg.eval.batch_size, "server_max_batch": cfg.eval.batch_size}
    for c, r in remote.items():
        same = sum([t["text"] for t in a["turns"]] == [t["text"] for t in b["turns"]] for a, b in zip(local.episodes, r.episodes))
        out[f"http_concurrency_{c}"] = {"seconds": r.metrics["eval_seconds"], "identical_episodes": same,
                                        "over_in_process": round(r.metrics["eval_seconds"] / local.metrics["eval_seconds"], 2),
                                        "succ@1": [local.metrics["succ@1"], r.metrics["succ@1"]]}
    return out


def main() -> int:
    tok = load_tokenizer("smollm2-135m")
    model = load_model("smollm2-135m")
    runners = {}
    for dtype, m in (("fp32", model), ("bf16", copy.deepcopy(model).to(torch.bfloat16))):  # bf16: model.dtype = "bf16"
        engine, chat = build_engine(m, tok)
        runners[dtype] = EngineRunner(engine, chat, name="smollm2-135m")
    runner = runners["fp32"]
    out: dict = {"model": "smollm2-135m (untrained)", "torch_threads": torch.get_num_threads()}
    runs = {
        "arith_mc": ("configs/ufo_demo.toml", [], "fp32"),
        "arith_mc_bf16": ("configs/ufo_demo.toml", [], "bf16"),
        "gsm8k": ("configs/gsm8k.toml", [], "fp32"),
    }
    for name, (config, extra, dtype) in runs.items():
        cfg = load_config(ROOT / config, extra)
        result = evaluate(runners[dtype], cfg)
        d = result.save(OUT / "eval" / name)
        build_report(d)
        out[name] = {"config": config, "dtype": dtype, **summary(result), "report": str((d / "report" / "report.html").relative_to(ROOT))}
        print(name, json.dumps(out[name]["succ@1"]), flush=True)
    cfg = load_config(ROOT / "configs/ufo_demo.toml", ["--eval.num_tasks", "50", "--eval.pass_k", "0"])
    out["http_vs_in_process"] = http_vs_local(cfg, runner)
    (OUT / "eval_default.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
