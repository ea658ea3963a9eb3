"""The self-contained HTML report: metrics tables, plots inlined as data URIs, and a
trajectory viewer whose episodes are embedded as JSON (no network, no other files)."""
from __future__ import annotations

import html
import json
import time
from importlib.resources import files

from turnrl.results import EvalResult


def _table(results: list[tuple[str, EvalResult]]) -> str:
    from turnrl.report import headline

    heads = [headline(r) for _, r in results]
    titles = list(dict.fromkeys(t for h in heads for t in h))
    rows = ["<tr><th>eval</th><th>episodes</th>" + "".join(f"<th>{html.escape(t)}</th>" for t in titles) + "</tr>"]
    for (label, r), h in zip(results, heads):
        cells = []
        for t in titles:
            c = h.get(t)
            if c is None:
                cells.append("<td>–</td>")
                continue
            v = f"{c['value']:.3f}"
            ci = f"<br><span class='ci'>[{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]</span>" if c["ci"] else ""
            cells.append(f"<td>{v}{ci}</td>")
        n = int(r.metrics.get("episodes", len(r.episodes)))
        err = int(r.metrics.get("errored_episodes", 0))
        rows.append(f"<tr><td>{html.escape(label)}</td><td>{n}{f' ({err} errored)' if err else ''}</td>{''.join(cells)}</tr>")
    return "<table class='metrics'>" + "".join(rows) + "</table>"


def _succ_table(results: list[tuple[str, EvalResult]]) -> str:
    max_k = max(r.meta["max_turns"] for _, r in results)
    rows = ["<tr><th>k</th>" + "".join(f"<th>{html.escape(lbl)}</th>" for lbl, _ in results) + "</tr>"]
    for k in range(1, max_k + 1):
        cells = []
        for _, r in results:
            v, ci = r.metrics.get(f"succ@{k}"), r.intervals.get(f"succ@{k}")
            cells.append("<td>–</td>" if v is None else
                         f"<td>{v:.3f}" + (f" <span class='ci'>[{ci[0]:.3f}, {ci[1]:.3f}]</span>" if ci else "") + "</td>")
        rows.append(f"<tr><td>Succ@{k}</td>{''.join(cells)}</tr>")
    return "<table class='metrics'>" + "".join(rows) + "</table>"


def render_html(title: str, results: list[tuple[str, EvalResult]], images: dict[str, str]) -> str:
    """``images``: file name -> base64 PNG."""
    meta = results[-1][1].meta
    sub = (f"model {meta.get('model')} · env {meta.get('env')} · {len(meta['seeds'])} held-out seeds · "
           f"up to {meta['max_turns']} attempts · generated {time.strftime('%Y-%m-%d %H:%M')}")
    body = [f"<section><h2>Headline metrics (95% bootstrap intervals)</h2>{_table(results)}</section>",
            f"<section><h2>Success within k attempts</h2>{_succ_table(results)}</section>"]
    if images:
        imgs = "".join(f"<img alt='{html.escape(n)}' src='data:image/png;base64,{b64}'>" for n, b64 in images.items())
        body.append(f"<section><h2>Plots</h2><div class='plots'>{imgs}</div></section>")
    data = {"evals": [{"label": lbl, "max_turns": r.meta["max_turns"], "episodes": r.episodes} for lbl, r in results]}
    blob = json.dumps(data).replace("</", "<\\/")  # never close the <script> early
    page = files("turnrl.report").joinpath("viewer.html").read_text()
    return (page.replace("{{TITLE}}", html.escape(title)).replace("{{SUBTITLE}}", html.escape(sub))
            .replace("{{BODY}}", "\n".join(body)).replace("{{DATA}}", blob))
