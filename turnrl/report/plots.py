"""PNG plots of reports (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from turnrl.results import EvalResult  # noqa: E402

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def succ_curves(results: list[tuple[str, EvalResult]], path: Path) -> Path:
    """Succ@k for k = 1..K with 95% bootstrap intervals, one line per result; Pass@k from
    independent samples as a hollow marker at x = k, for the UFO comparison."""
    fig, ax = plt.subplots(figsize=(7, 4.4), dpi=120)
    max_k = max(r.meta["max_turns"] for _, r in results)
    for i, (label, r) in enumerate(results):
        c = COLORS[i % len(COLORS)]
        ks = list(range(1, r.meta["max_turns"] + 1))
        ys = [r.metrics.get(f"succ@{k}", 0.0) for k in ks]
        lo = [r.intervals.get(f"succ@{k}", (y, y))[0] for k, y in zip(ks, ys)]
        hi = [r.intervals.get(f"succ@{k}", (y, y))[1] for k, y in zip(ks, ys)]
        ax.fill_between(ks, lo, hi, color=c, alpha=0.15, linewidth=0)
        ax.plot(ks, ys, "o-", color=c, label=f"{label}: Succ@k (with feedback)")
        pk = r.meta.get("pass_k") or 0
        if pk and f"pass@{pk}" in r.metrics:
            y = r.metrics[f"pass@{pk}"]
            lo_p, hi_p = r.intervals.get(f"pass@{pk}", (y, y))
            ax.errorbar([pk], [y], yerr=[[y - lo_p], [hi_p - y]], fmt="s", mfc="white", color=c, capsize=4,
                        label=f"{label}: Pass@{pk} (independent samples)")
            max_k = max(max_k, pk)
    ax.set_xticks(range(1, max_k + 1))
    ax.set_xlabel("attempts k")
    ax.set_ylabel("fraction of held-out tasks solved")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("Success within k attempts (shaded: 95% bootstrap interval)")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def training_curves(rows: list[dict], path: Path) -> Path | None:
    """Training reward / success / loss per step and held-out Succ@1 / Succ@K per eval."""
    train = [r for r in rows if r.get("split") == "train"]
    evals = [r for r in rows if r.get("split") == "eval"]
    if not train and not evals:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4), dpi=110)
    panels = [
        (axes[0, 0], train, [("reward", "mean episode reward")], "training reward"),
        (axes[0, 1], train, [("succ@1", "Succ@1"), (_last_succ(train), "Succ@K")], "training success (sampled)"),
        (axes[1, 0], train, [("loss", "loss"), ("kl", "KL to reference")], "update"),
        (axes[1, 1], evals, [("succ@1", "Succ@1"), (_last_succ(evals), "Succ@K"), ("pass@1", "Pass@1"),
                             ("retrieval_accuracy", "retrieval acc. (collapse)"),
                             ("top_first_answer_share", "top first answer")], "held-out eval"),
    ]
    for ax, data, series, title in panels:
        for j, (key, label) in enumerate(series):
            pts = [(r["step"], r[key]) for r in data if key and isinstance(r.get(key), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, "o-" if len(pts) < 12 else "-", color=COLORS[j], label=label, markersize=4)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _last_succ(rows: list[dict]) -> str:
    ks = sorted({int(k.split("@")[1]) for r in rows for k in r if k.startswith("succ@")})
    return f"succ@{ks[-1]}" if ks else ""
