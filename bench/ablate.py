"""Credit-assignment and masking ablations, one resumable cell at a time.

    python bench/ablate.py                 # run every cell not yet on disk, then the table
    python bench/ablate.py --list          # the cells and whether each is done
    python bench/ablate.py --only a_ufo    # cells whose name starts with a_ufo
    python bench/ablate.py --table         # only rebuild bench/results/ablation.json + plot

Each finished cell writes ``bench/results/ablation/<cell>.json`` and is skipped on rerun, so
the table can be filled over several sittings. Every cell is sized for <= 10 minutes on 2
CPU cores (SmolLM2-135M-Instruct, fp32); its JSON records its own wall time. Within a
comparison, cells have equal sample budgets: the same prompts x group size x steps (the
same number of episodes; multi-turn episodes hold more turns).

(a) UFO's comparison (arXiv 2507.14295) on free-form two-digit addition: single-turn RL
    (training with 1 attempt) vs multi-turn UFO training (5 attempts), both evaluated with 5
    attempts and the feedback message.
(b) estimators on guess-the-number over 1..100 (configs/guess_number.toml with
    format_penalty 0.1), where turn credit matters: grpo, turn_returns, gigpo, igpo, gae,
    archer, seeupo, refuel.
(c) SimpleTIR void-turn masking (arXiv 2509.02479) on and off on the code-tool env.
(d) Mini-o3 over-turn masking (arXiv 2509.07969) on the same game: trained with a 3-turn
    cap, evaluated with 3 and 8 turns.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "ablation"
SEEDS = (0, 1)
NOTE = ""

# sizes shared by a comparison's cells (equal sample budgets)
ARITH = ["--task.source", "arithmetic", "--task.digits", "2", "--task.operators", "+",
         "--rollout.prompts_per_step", "4", "--rollout.group_size", "4", "--rollout.max_new_tokens", "16",
         "--rollout.temperature", "0.7", "--rollout.max_context", "512",
         "--train.steps", "8", "--train.lr", "5e-6", "--eval.num_tasks", "50", "--eval.pass_k", "5",
         "--eval.max_new_tokens", "16"]
# the game with its format penalty on: without it most steps of a short run see no win and
# train nothing (bench/results/guess_number.json)
GUESS_KWARGS = ["--env.kwargs", '{"low": 1, "high": 100, "eval_fraction": 0.5, "format_penalty": 0.1}']
GUESS = [str(ROOT / "configs" / "guess_number.toml"), *GUESS_KWARGS,
         "--rollout.prompts_per_step", "4", "--rollout.group_size", "4", "--train.steps", "8",
         "--eval.num_tasks", "50", "--eval.pass_k", "0"]
TIR = ["--env.name", "tir", "--task.source", "arithmetic", "--task.digits", "3", "--task.operators", "*",
       "--rollout.prompts_per_step", "2", "--rollout.group_size", "4", "--rollout.max_new_tokens", "64",
       "--rollout.max_context", "1024", "--train.steps", "6", "--train.lr", "2e-6",
       "--eval.num_tasks", "20", "--eval.pass_k", "0", "--eval.max_new_tokens", "64"]
MINI_O3 = [str(ROOT / "configs" / "guess_number.toml"), *GUESS_KWARGS, "--env.max_turns", "3",
           "--rollout.prompts_per_step", "4", "--rollout.group_size", "4", "--train.steps", "8",
           "--eval.num_tasks", "50", "--eval.pass_k", "0"]


def cells() -> list[dict]:
    out = []
    for seed in SEEDS:
        s = ["--train.seed", str(seed)]
        out += [
            {"name": f"a_ufo_single_turn_s{seed}", "group": "a", "args": [*ARITH, "--env.max_turns", "1", *s], "eval_turns": [5]},
            {"name": f"a_ufo_multi_turn_s{seed}", "group": "a", "args": [*ARITH, "--env.max_turns", "5", *s], "eval_turns": [5]},
        ]
    for seed in SEEDS:
        for algo in ("grpo", "turn_returns", "gigpo", "igpo", "gae", "archer", "seeupo", "refuel"):
            # no mask for any: critics learn from all-equal groups too, and refuel's pairs stay whole
            extra = ["--algo.name", algo, "--algo.masks", "[]"]
            out.append({"name": f"b_{algo}_s{seed}", "group": "b", "args": [*GUESS, *extra, "--train.seed", str(seed)],
                        "eval_turns": []})
    for seed in SEEDS:
        for on in (True, False):
            masks = '["void", "zero_variance"]' if on else '["zero_variance"]'
            out.append({"name": f"c_tir_void_{'on' if on else 'off'}_s{seed}", "group": "c",
                        "args": [*TIR, "--algo.masks", masks, "--train.seed", str(seed)], "eval_turns": []})
    for seed in SEEDS:
        for on in (True, False):
            masks = '["over_turn", "zero_variance"]' if on else '["zero_variance"]'
            out.append({"name": f"d_mini_o3_{'on' if on else 'off'}_s{seed}", "group": "d",
                        "args": [*MINI_O3, "--algo.masks", masks, "--train.seed", str(seed)], "eval_turns": [3, 8]})
    return out


KEEP = ("succ@1", "pass@5", "unique_answer_ratio", "retry_accuracy", "self_correction_rate", "reward",
        "invalid_format_rate", "mean_turns", "distinct_instances", "episodes")


def pick(m: dict, turns: int) -> dict:
    out = {k: m[k] for k in KEEP if k in m}
    out[f"succ@{turns}"] = m.get(f"succ@{turns}")
    if "pass@5" in m and turns == 5:
        out["succ@5_minus_pass@5"] = m[f"succ@{turns}"] - m["pass@5"]
    return out


def run_cell(cell: dict) -> dict:
    from turnrl.config import load_config
    from turnrl.evaluate import EngineRunner, evaluate
    from turnrl.trainer import Trainer

    args = list(cell["args"])
    config = args.pop(0) if args and not args[0].startswith("--") else None
    run_dir = ROOT / "runs" / "ablation" / cell["name"]
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished earlier attempt: start the cell again
    cfg = load_config(config, [*args, "--train.out_dir", str(run_dir), "--eval.before", "false",
                               "--log.progress", "false", "--train.checkpoint_every", "0"])
    t0 = time.time()
    trainer = Trainer(cfg)
    summary = trainer.train()
    train_rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in train_rows if r["split"] == "train"]
    result = {
        "cell": cell["name"], "group": cell["group"], "config": config, "args": args,
        "train_turn_cap": cfg.env.max_turns, "steps": cfg.train.steps,
        "episodes_per_step": cfg.rollout.prompts_per_step * cfg.rollout.group_size,
        "held_out_tasks": cfg.eval.num_tasks,
        "eval": {str(cfg.env.max_turns): pick(summary["eval_after"], cfg.env.max_turns)},
        "train": {
            "max_grad_norm": max((r.get("grad_norm", 0.0) for r in train_rows), default=0.0),
            "mean_reward": sum(r.get("reward", 0.0) for r in train_rows) / max(1, len(train_rows)),
            "last_reward": train_rows[-1].get("reward") if train_rows else None,
            "updates_skipped": sum(int(r.get("update_skipped", 0)) for r in train_rows),
            "masked": {k: sum(r.get(k, 0.0) for r in train_rows) for k in train_rows[0] if k.startswith("masked_")}
            if train_rows else {},
        },
    }
    for k in cell["eval_turns"]:
        if k == cfg.env.max_turns:
            continue
        ecfg = cfg.model_copy(deep=True)
        ecfg.env.max_turns = k
        res = evaluate(EngineRunner(trainer.engine, trainer.chat, name=cell["name"]), ecfg)
        result["eval"][str(k)] = pick(res.metrics, k)
    result["minutes"] = round((time.time() - t0) / 60, 2)
    result["torch_threads"] = torch.get_num_threads()
    result["note"] = NOTE
    return result


def table() -> dict:
    rows = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    names = {c["name"] for c in cells()}
    data = {"cells_done": len(rows), "cells_total": len(names),
            "missing": sorted(names - {r["cell"] for r in rows}), "cells": rows, "mean_over_seeds": {}}
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["cell"].rsplit("_s", 1)[0], []).append(r)
    for key, rs in sorted(by.items()):
        agg = {"seeds": len(rs)}
        for k_turns in rs[0]["eval"]:
            for metric in rs[0]["eval"][k_turns]:
                vals = [r["eval"][k_turns][metric] for r in rs if r["eval"].get(k_turns, {}).get(metric) is not None]
                if vals:
                    agg[f"{metric}@eval{k_turns}"] = sum(vals) / len(vals)
        agg["max_grad_norm"] = max(r["train"]["max_grad_norm"] for r in rs)
        agg["mean_train_reward"] = sum(r["train"]["mean_reward"] for r in rs) / len(rs)
        data["mean_over_seeds"][key] = agg
    (ROOT / "bench" / "results" / "ablation.json").write_text(json.dumps(data, indent=2))
    _plot(data)
    return data


def markdown(data: dict) -> str:
    """The table docs/algorithms.md shows: one row per setting, means over its seeds."""
    rows = ["| setting | seeds | eval turns | Succ@1 | Succ@K | Pass@5 | Succ@K − Pass@5 | unique answers | retry accuracy "
            "| max grad norm | mean train reward |", "|" + "---|" * 11]
    for key, agg in data["mean_over_seeds"].items():
        turns = sorted({m.rsplit("@eval", 1)[1] for m in agg if "@eval" in m}, key=int)
        for t in turns:
            g = lambda m: agg.get(f"{m}@eval{t}")  # noqa: E731
            f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
            rows.append(f"| {key} | {agg['seeds']} | {t} | {f(g('succ@1'))} | {f(g(f'succ@{t}'))} | {f(g('pass@5'))} "
                        f"| {f(g('succ@5_minus_pass@5'))} | {f(g('unique_answer_ratio'))} | {f(g('retry_accuracy'))} "
                        f"| {agg['max_grad_norm']:.2f} | {agg['mean_train_reward']:.3f} |")
    return "\n".join(rows)


def _plot(data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = data["mean_over_seeds"]
    if not agg:
        return
    keys = list(agg)
    vals = []
    for k in keys:
        succ = [v for m, v in agg[k].items() if m.startswith("succ@") and "minus" not in m and not m.startswith("succ@1@")]
        vals.append(max(succ) if succ else 0.0)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(keys) + 1.2))
    ax.barh(keys, vals, color="#4878a8")
    ax.set_xlabel("held-out Succ@K (K = the largest eval turn cap of the cell; mean over seeds)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(ROOT / "bench" / "results" / "ablation.png", dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated name prefixes")
    ap.add_argument("--max-cells", type=int, default=0, help="stop after this many new cells")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--markdown", action="store_true", help="print the results table (Markdown) and exit")
    ap.add_argument("--note", default="", help="recorded in each cell's JSON (e.g. what else ran beside it)")
    a = ap.parse_args(argv)
    global NOTE
    NOTE = a.note
    if a.threads:
        torch.set_num_threads(a.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    if a.markdown:
        print(markdown(table()))
        return 0
    todo = [c for c in cells() if not a.only or any(c["name"].startswith(p) for p in a.only.split(","))]
    if a.list:
        for c in todo:
            print(("done " if (OUT / f"{c['name']}.json").exists() else "todo ") + c["name"])
        return 0
    if not a.table:
        ran = 0
        for c in todo:
            path = OUT / f"{c['name']}.json"
            if path.exists():
                continue
            print(f"ablate: {c['name']} ...", flush=True)
            res = run_cell(c)
            path.write_text(json.dumps(res, indent=2))
            print(f"ablate: {c['name']} done in {res['minutes']} min", flush=True)
            ran += 1
            if a.max_cells and ran >= a.max_cells:
                break
    data = table()
    print(f"ablate: {data['cells_done']}/{data['cells_total']} cells in bench/results/ablation.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
