"""The self-contained HTML report: metrics tables, plots inlined as data URIs, and a
trajectory viewer whose episodes are embedded as JSON (no network, no other files)."""
from __future__ import annotations

import html
import json
import time
from importlib.resources import files

from turnrl.results import EvalResult


def _cell(cell) -> str:
    from turnrl.report import number

    if cell is None:
        return "<td>–</td>"
    if isinstance(cell, str):
        return f"<td>{html.escape(cell)}</td>"
    v, ci = number(cell)
    return f"<td>{v}" + (f"<br><span class='ci'>{ci}</span>" if ci else "") + "</td>"


def _table(headers: list[str], rows: list[list]) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"
    return "<table class='metrics'>" + head + "".join("<tr>" + "".join(map(_cell, r)) + "</tr>" for r in rows) + "</table>"


def render_html(title: str, results: list[tuple[str, EvalResult]], images: dict[str, str]) -> str:
    """``images``: file name -> base64 PNG."""
    meta = results[-1][1].meta
    sub = (f"model {meta.get('model')} · env {meta.get('env')} · {len(meta['seeds'])} held-out seeds · "
           f"up to {meta['max_turns']} attempts · generated {time.strftime('%Y-%m-%d %H:%M')}")
    from turnrl.report import tables

    main, succ = tables(results)
    body = [f"<section><h2>Headline metrics (95% bootstrap intervals)</h2>{_table(*main)}</section>",
            f"<section><h2>Success within k attempts</h2>{_table(*succ)}</section>"]
    if images:
        imgs = "".join(f"<img alt='{html.escape(n)}' src='data:image/png;base64,{b64}'>" for n, b64 in images.items())
        body.append(f"<section><h2>Plots</h2><div class='plots'>{imgs}</div></section>")
    data = {"evals": [{"label": lbl, "max_turns": r.meta["max_turns"], "episodes": r.episodes} for lbl, r in results]}
    blob = json.dumps(data).replace("</", "<\\/")  # never close the <script> early
    page = files("turnrl.report").joinpath("viewer.html").read_text()
    return (page.replace("{{TITLE}}", html.escape(title)).replace("{{SUBTITLE}}", html.escape(sub))
            .replace("{{BODY}}", "\n".join(body)).replace("{{DATA}}", blob))
