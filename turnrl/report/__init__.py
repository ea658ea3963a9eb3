"""Reports of eval results and training runs: JSON, a Markdown table, PNG plots and one
self-contained HTML file with a trajectory viewer.

``build_report(RUN_DIR)`` works on a training run (``metrics.jsonl`` + ``evals/step_N``)
or on one eval results directory; ``compare`` puts several results in one table.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

from turnrl.jsonl import iter_jsonl
from turnrl.results import EvalResult, ResultsError, find_evals, load_eval

# (metric key, column title); each shown with its 95% interval where one was computed
COLUMNS = [("succ@1", "Succ@1"), ("succ@K", "Succ@K"), ("pass@k", "Pass@k"), ("self_correction_rate", "self-correction"),
           ("answer_change_rate", "answer change"), ("repeated_answer_rate", "repeated answer"),
           ("invalid_format_rate", "invalid format"), ("mean_attempts_to_solve", "attempts to solve"),
           ("tokens_per_episode", "tokens / ep"), ("latency_s_per_episode", "latency s / ep"),
           # template collapse (RAGEN-2, turnrl.diagnostics)
           ("retrieval_accuracy", "retrieval acc."), ("mi_proxy", "MI proxy (nats)"),
           ("reply_entropy", "reply entropy"), ("top_first_answer_share", "top first answer")]


def _key(r: EvalResult, key: str) -> str:
    if key == "succ@K":
        return f"succ@{r.meta['max_turns']}"
    if key == "pass@k":
        return f"pass@{r.meta.get('pass_k') or 0}"
    return key


def headline(r: EvalResult) -> dict[str, dict]:
    """Column title -> {"key", "value", "ci"} for one result."""
    out = {}
    for key, title in COLUMNS:
        k = _key(r, key)
        if k in r.metrics:
            pass_title = f"Pass@{r.meta.get('pass_k')}" + (f" (n={r.meta['pass_n']})" if r.meta.get("pass_n") else "")
            title = {"Succ@K": f"Succ@{r.meta['max_turns']}", "Pass@k": pass_title}.get(title, title)
            out[title] = {"key": k, "value": r.metrics[k], "ci": list(r.intervals[k]) if k in r.intervals else None}
    return out


def tables(results: list[tuple[str, EvalResult]]) -> list[tuple[list[str], list[list]]]:
    """The headline table and the Succ@k table as (headers, rows), whatever renders them.
    A cell is text, ``{"value", "ci"}``, or None (not measured)."""
    heads = [headline(r) for _, r in results]
    titles = list(dict.fromkeys(t for h in heads for t in h))
    main = []
    for (label, r), h in zip(results, heads):
        n = int(r.metrics.get("episodes", len(r.episodes)))
        err = int(r.metrics.get("errored_episodes", 0))
        d = r.meta.get("distinct_instances")
        main.append([label, f"{n}{f' ({d} distinct)' if d is not None else ''}{f' ({err} errored)' if err else ''}",
                     *(h.get(t) for t in titles)])
    max_k = max(r.meta["max_turns"] for _, r in results)
    succ = [[f"Succ@{k}", *({"value": r.metrics[f"succ@{k}"], "ci": r.intervals.get(f"succ@{k}")}
                            if f"succ@{k}" in r.metrics else None for _, r in results)] for k in range(1, max_k + 1)]
    return [(["run", "episodes", *titles], main), (["k", *(label for label, _ in results)], succ)]


def number(cell: dict) -> tuple[str, str | None]:
    """A measured cell as (value, interval) text."""
    v, ci = cell["value"], cell["ci"]
    return (f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"), (f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else None)


def _fmt(cell) -> str:
    if cell is None:
        return "–"
    if isinstance(cell, str):
        return cell
    v, ci = number(cell)
    return f"{v} {ci}" if ci else v


def markdown_table(results: list[tuple[str, EvalResult]]) -> str:
    lines = []
    for headers, rows in tables(results):
        lines += ["| " + " | ".join(headers) + " |", "|---" * len(headers) + "|"]
        lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines) + "\nIntervals: 95% percentile bootstrap over episodes (Pass@k: over tasks).\n"


def read_metrics_log(path: Path) -> list[dict]:
    return [row for _, row in iter_jsonl(path, ResultsError, required=("split", "step"), what="a metrics row")]


def _label(r: EvalResult, d: Path) -> str:
    return f"step {r.meta['step']}" if r.meta.get("step") is not None else (r.meta.get("model") or d.name)


def build_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``report.json``, ``report.md``, ``succ_at_k.png``, ``training.png`` (runs
    only) and ``report.html`` into ``RUN_DIR/report`` (or ``out_dir``); returns the HTML path."""
    from turnrl.report.html import render_html
    from turnrl.report.plots import succ_curves, training_curves

    run = Path(run_dir)
    dirs = find_evals(run)
    results = [(_label(r, d), r) for d, r in ((d, load_eval(d)) for d in dirs)]
    rows = read_metrics_log(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
    out = Path(out_dir) if out_dir else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    shown = results if len(results) <= 4 else [results[0], *results[-3:]]  # first, and the last three
    images = {"succ_at_k.png": succ_curves(shown, out / "succ_at_k.png")}
    if rows:
        p = training_curves(rows, out / "training.png")
        if p:
            images["training.png"] = p
    md = markdown_table(results)
    title = f"turnrl report: {run.resolve().name}"
    (out / "report.md").write_text(f"# {title}\n\n{md}\n" + "".join(f"![{n}]({n})\n" for n in images))
    doc = {"run_dir": str(run), "evals": [{"label": lbl, "dir": str(d), "meta": r.meta, "metrics": r.metrics,
                                           "intervals": {k: list(v) for k, v in r.intervals.items()}}
                                          for d, (lbl, r) in zip(dirs, results)],
           "training_rows": len(rows), "images": list(images)}
    (out / "report.json").write_text(json.dumps(doc, indent=2))
    page = render_html(title, results, images={n: base64.b64encode(p.read_bytes()).decode() for n, p in images.items()})
    (out / "report.html").write_text(page)
    return out / "report.html"


def compare(results: list[tuple[str, EvalResult]], out_dir: str | Path) -> Path:
    """One table and one Succ@k plot over several results evaluated on the same seeds."""
    from turnrl.report.plots import succ_curves

    (l0, r0), *rest = results
    for label, r in rest:
        if r.meta["seeds"] != r0.meta["seeds"] or r.meta["max_turns"] != r0.meta["max_turns"]:
            raise ResultsError(f"{label} was evaluated on other seeds or turns than {l0}; compare needs the same "
                               f"({len(r.meta['seeds'])} vs {len(r0.meta['seeds'])} seeds, "
                               f"max_turns {r.meta['max_turns']} vs {r0.meta['max_turns']})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown_table(results)
    succ_curves(results, out / "compare.png")
    (out / "compare.md").write_text(f"# turnrl compare\n\n{md}\n![Succ@k](compare.png)\n")
    (out / "compare.json").write_text(json.dumps(
        [{"label": lbl, "meta": r.meta, "metrics": r.metrics, "intervals": {k: list(v) for k, v in r.intervals.items()}}
         for lbl, r in results], indent=2))
    return out / "compare.md"


__all__ = ["build_report", "compare", "headline", "markdown_table"]
