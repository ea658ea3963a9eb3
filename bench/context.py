"""Context strategies on a long-horizon env: ``full`` history vs ``markovian`` context.

The env is the maze (``env.name = "maze"``: fully observed, the map is shown again after
every move, so full history grows by a map and a reply per turn). SmolLM2-135M-Instruct.

1. Rollouts only: for episodes of T turns (a maze no reply solves quickly), the peak
   context length (the longest ids any action was sampled after) and the generated
   tokens per second, for ``full`` and ``markovian``.
2. A short GRPO run per strategy and seed (2 seeds), then held-out Succ@k on the same
   eval mazes under the strategy the model was trained with.

One torch thread (``train.threads = 1``). Writes bench/results/context.json and
docs/img/context.png. Pass ``--niced`` when it runs beside other jobs (recorded in the
JSON: its tokens/s are then lower bounds).
"""
from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from turnrl.build import build_engine
from turnrl.config import load_config
from turnrl.engine.base import SamplingParams
from turnrl.envs import MazeEnv
from turnrl.models import load_model, load_tokenizer
from turnrl.rollout import RolloutConfig, collect
from turnrl.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
TURNS = [4, 8, 16]  # episode lengths of the rollout sweep
EPISODES, MAX_NEW, SIZE = 4, 16, 3  # per sweep point; tokens per reply; maze cells per side (7 x 7 map)
SEEDS = [0, 1]
TRAIN = ["--env.name", "maze", "--env.kwargs", json.dumps({"size": 3}), "--env.max_turns", "6",
         "--rollout.prompts_per_step", "2", "--rollout.group_size", "4", "--rollout.max_new_tokens", str(MAX_NEW),
         "--rollout.max_context", "1024", "--rollout.temperature", "1.0", "--train.steps", "2", "--train.lr", "5e-6",
         "--train.checkpoint_every", "0", "--train.threads", "1", "--algo.masks", "[]", "--eval.num_tasks", "6", "--eval.pass_k", "0",
         "--eval.before", "false", "--eval.collapse_sample", "0", "--log.progress", "false"]


def sweep(model, tok) -> list[dict]:
    rows = []
    for context in ("full", "markovian"):
        for turns in TURNS:
            engine, chat = build_engine(model, tok)
            envs = [MazeEnv(size=SIZE, max_turns=turns) for _ in range(EPISODES)]
            cfg = RolloutConfig(SamplingParams(temperature=1.0, max_new_tokens=MAX_NEW, seed=0), max_context=16384,
                                context=context)
            t0 = time.time()
            eps = collect(envs, list(range(EPISODES)), list(range(EPISODES)), engine, chat, cfg)
            dt = time.time() - t0
            gen = sum(e.num_action_tokens for e in eps)
            rows.append({
                "context": context, "turns": turns, "episodes": EPISODES,
                "turns_played": sum(len(e.turns) for e in eps) / EPISODES,
                "peak_context_tokens": max(len(c) for e in eps for c in e.contexts()),
                "final_context_tokens_mean": sum(len(e.contexts()[-1]) for e in eps) / EPISODES,
                "generated_tokens": gen, "seconds": dt, "tokens_per_second": gen / dt,
            })
            print(json.dumps(rows[-1]), flush=True)
    return rows


def train_runs() -> list[dict]:
    rows = []
    for context in ("full", "markovian"):
        for seed in SEEDS:
            with tempfile.TemporaryDirectory() as d:
                cfg = load_config(None, [*TRAIN, "--rollout.context", context, "--train.seed", str(seed),
                                         "--train.out_dir", str(Path(d) / "run")])
                t0 = time.time()
                trainer = Trainer(cfg)
                summary = trainer.train()
                train = [json.loads(l) for l in (Path(d) / "run" / "metrics.jsonl").read_text().splitlines()]
                train = [r for r in train if r["split"] == "train"]
            ev = summary["eval_after"]
            rows.append({
                "context": context, "seed": seed, "minutes": (time.time() - t0) / 60,
                "eval_succ@6": ev["succ@6"], "eval_succ@1": ev["succ@1"],
                "eval_invalid_format_rate": ev["invalid_format_rate"],
                "eval_state_missing_rate": ev.get("state_missing_rate"),
                "eval_peak_context_tokens": ev.get("peak_context_tokens"),
                "train_reward": [r["reward"] for r in train],
                "train_tokens_per_second": [r["tokens_per_second"] for r in train],
            })
            print(json.dumps(rows[-1]), flush=True)
    return rows


def plot(sweep_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for context, style in (("full", "o-"), ("markovian", "s-")):
        rs = [r for r in sweep_rows if r["context"] == context]
        axes[0].plot([r["turns"] for r in rs], [r["peak_context_tokens"] for r in rs], style, label=context)
        axes[1].plot([r["turns"] for r in rs], [r["tokens_per_second"] for r in rs], style, label=context)
    axes[0].set(xlabel="turns per episode", ylabel="peak context (tokens)", title="context length")
    axes[1].set(xlabel="turns per episode", ylabel="generated tokens / s", title="rollout throughput")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    niced = "--niced" in sys.argv[1:]
    t0 = time.time()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # on a shared, loaded 2-core machine one thread ran decoding ~10x faster than two
    model, tok = load_model("smollm2-135m").eval(), load_tokenizer("smollm2-135m")
    rows = sweep(model, tok)
    del model
    runs = train_runs()
    out = {
        "setup": {"model": "smollm2-135m", "env": f"maze (sweep: size {SIZE}; training: size 3, 6 turns)",
                  "sweep_episodes": EPISODES, "max_new_tokens": MAX_NEW, "train_args": TRAIN, "seeds": SEEDS,
                  "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
                  "niced_beside_other_jobs": niced,
                  "note": "tokens/s are lower bounds when niced_beside_other_jobs is true"},
        "sweep": rows, "train": runs, "minutes": (time.time() - t0) / 60,
    }
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "context.json").write_text(json.dumps(out, indent=2))
    plot(rows, ROOT / "docs" / "img" / "context.png")
    print(f"wrote bench/results/context.json and docs/img/context.png in {out['minutes']:.1f} min")


if __name__ == "__main__":
    main()
