"""turnrl vs TRL's GRPOTrainer on TRL's own kind of workload, in one run.

Single-turn two-digit addition, SmolLM2-135M-Instruct, 4 prompts x 8 samples per step,
<= 32 new tokens, temperature 0.7, top_p 1, lr 1e-6, no KL (TRL's default beta = 0),
on the CPU. Both get the same reward (1 if the last number is the sum). TRL runs
without gradient checkpointing (turnrl does not use it either). Seconds per step are the
median over steps after the first (warm-up).

fp32 by default (bench/results/vs_trl.json). ``--dtype bf16`` (bench/results/vs_trl_bf16.json)
gives both the model in bf16: turnrl with ``model.dtype = "bf16"`` (bf16 model, fp32 master
weights in the optimizer), TRL the same bf16 model with ``bf16=False`` (its ``bf16=True`` is
autocast over fp32 weights, not the same setup), so its optimizer steps the bf16 weights
directly, which costs it less than turnrl's masters. Both models come from
``turnrl.models.load_model``, so TRL's generation uses turnrl's decode attention as well.

    python bench/vs_trl.py [STEPS] [--dtype fp32|bf16]
"""
from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PROMPTS, GROUP, MAX_NEW, TEMP, LR = 4, 8, 32, 0.7, 1e-6


def trl_seconds_per_step(steps: int, out_dir: Path, dtype: str) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from turnrl.envs import ArithmeticTasks
    from turnrl.envs.answers import extract_last_number, verify_numeric
    from turnrl.models import load_model, load_tokenizer

    src = ArithmeticTasks("train")
    rows = [{"prompt": [{"role": "user", "content": src[i].question}], "reference": src[i].answer}
            for i in range(PROMPTS * (steps + 2))]

    def reward(completions, reference, **_):
        out = []
        for c, ref in zip(completions, reference):
            text = c[0]["content"] if isinstance(c, list) else c
            got = extract_last_number(text)
            out.append(1.0 if got is not None and verify_numeric(got, ref) else 0.0)
        return out

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.time()

        def on_step_end(self, *a, **k):
            times.append(time.time() - self.t)

    args = GRPOConfig(
        output_dir=str(out_dir), per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP,
        max_completion_length=MAX_NEW, temperature=TEMP, top_p=1.0, learning_rate=LR, beta=0.0,
        max_steps=steps, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        gradient_checkpointing=False, bf16=False, seed=0, shuffle_dataset=False,
    )
    model = load_model("smollm2-135m", dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=load_tokenizer("smollm2-135m"),
                          callbacks=[Timer()])
    trainer.train()
    return times


def turnrl_seconds_per_step(steps: int, out_dir: Path, dtype: str) -> list[float]:
    from turnrl.config import load_config
    from turnrl.trainer import Trainer

    cfg = load_config(None, [
        "--env.max_turns", "1", "--env.repetition_penalty", "0", "--env.format_penalty", "0", "--env.success_decay", "1",
        "--rollout.prompts_per_step", str(PROMPTS), "--rollout.group_size", str(GROUP),
        "--rollout.max_new_tokens", str(MAX_NEW), "--rollout.temperature", str(TEMP),
        "--algo.masks", "[]", "--algo.clip_high", "0.2",
        "--train.lr", str(LR), "--train.steps", str(steps), "--train.out_dir", str(out_dir),
        "--train.checkpoint_every", "0", "--eval.before", "false", "--eval.num_tasks", "1", "--eval.pass_k", "0",
        "--log.progress", "false", "--model.dtype", dtype])
    Trainer(cfg).train()
    rows = [json.loads(l) for l in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step_seconds"] for r in rows if r["split"] == "train"]


def main(argv: list[str]) -> int:
    import importlib.util

    missing = [m for m in ("trl", "datasets") if importlib.util.find_spec(m) is None]
    if missing:  # before minutes of turnrl steps, not after
        print(f"bench/vs_trl.py needs {' and '.join(missing)}: .venv/bin/pip install -e .[bench]", file=sys.stderr)
        return 2
    import argparse

    ap = argparse.ArgumentParser(prog="bench/vs_trl.py")
    ap.add_argument("steps", nargs="?", type=int, default=5)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = ap.parse_args(argv)
    steps = args.steps
    tmp = ROOT / "runs" / "bench_vs_trl"
    if tmp.exists():  # a benchmark is a fresh run: the trainer refuses to train over an earlier one
        print(f"vs_trl: removing the earlier runs in {tmp}", file=sys.stderr)
        shutil.rmtree(tmp)
    torch.manual_seed(0)
    ours = turnrl_seconds_per_step(steps, tmp / "turnrl", args.dtype)
    theirs = trl_seconds_per_step(steps, tmp / "trl", args.dtype)
    med = lambda xs: statistics.median(xs[1:] if len(xs) > 1 else xs)
    import trl
    result = {
        "workload": {"task": "single-turn two-digit addition", "model": "SmolLM2-135M-Instruct",
                     "prompts_per_step": PROMPTS, "samples_per_prompt": GROUP, "max_new_tokens": MAX_NEW,
                     "temperature": TEMP, "dtype": args.dtype, "threads": torch.get_num_threads(), "steps": steps},
        "trl_version": trl.__version__,
        "turnrl_seconds_per_step": round(med(ours), 2), "trl_seconds_per_step": round(med(theirs), 2),
        "turnrl_step_seconds": [round(x, 2) for x in ours], "trl_step_seconds": [round(x, 2) for x in theirs],
    }
    result["ratio"] = round(result["turnrl_seconds_per_step"] / result["trl_seconds_per_step"], 3)
    out = ROOT / "bench" / "results" / ("vs_trl.json" if args.dtype == "fp32" else "vs_trl_bf16.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
