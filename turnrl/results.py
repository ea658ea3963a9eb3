"""Eval results on disk: ``eval.json`` (metrics, intervals, what was run) beside
``episodes.jsonl`` (one record per episode, for the trajectory viewer).

A training run keeps one such directory per evaluation under ``RUN_DIR/evals/step_N``;
``turnrl eval --out DIR`` writes one directly. Loading checks every file and field the
reports need and names what is missing.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turnrl.jsonl import iter_jsonl
from turnrl.metrics import solved_at, turn_counts
from turnrl.types import Episode

SCHEMA = "turnrl.eval/1"
EVAL_FILE, EPISODES_FILE = "eval.json", "episodes.jsonl"


class ResultsError(ValueError):
    """A run directory or results file is missing something a report needs."""


class OutDirError(RuntimeError):
    """An output directory that cannot be made (one line, before the work starts)."""


def holds_training_run(path: str | Path) -> bool:
    """Whether ``path`` is a training run's directory (its metrics or checkpoints)."""
    return (Path(path) / "metrics.jsonl").exists() or (Path(path) / "checkpoints").exists()


def check_out_dir(path: str | Path, what: str) -> Path:
    """Check, before minutes of work go into results that could not be written, that the
    directory ``what`` (e.g. ``train.out_dir``) names can be made: one error when a file
    stands there or on its path, or when its nearest existing folder is not writable.
    Nothing is created (a run that fails early leaves no empty directory)."""
    path = Path(path)
    for p in (path, *path.parents):
        if not p.exists():
            continue
        if not p.is_dir():
            raise OutDirError(f"{what} {path}: " + ("a file is there, not a directory" if p == path
                                                     else f"a file stands on its path ({p})"))
        if not os.access(p, os.W_OK | os.X_OK) and p != path:
            raise OutDirError(f"{what} {path}: {p} is not writable")
        break
    return path


@dataclass
class EvalResult:
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]  # 95% bootstrap intervals of the headline metrics
    meta: dict[str, Any]  # model, env, split, seeds, sampling, max_turns, step, ...
    episodes: list[dict] = field(default_factory=list)  # records (see episode_record)

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / (EPISODES_FILE + ".tmp")
        with tmp.open("w") as f:
            for rec in self.episodes:
                f.write(json.dumps(rec) + "\n")
        tmp.replace(out / EPISODES_FILE)
        doc = {"schema": SCHEMA, "meta": self.meta, "metrics": self.metrics,
               "intervals": {k: list(v) for k, v in self.intervals.items()}, "episodes_file": EPISODES_FILE}
        (out / (EVAL_FILE + ".tmp")).write_text(json.dumps(doc, indent=2))
        (out / (EVAL_FILE + ".tmp")).replace(out / EVAL_FILE)
        return out


def episode_record(ep: Episode, tokenizer=None) -> dict:
    """Everything the trajectory viewer shows. With a tokenizer, each trained action is
    also split into its token pieces (frozen and observation tokens are never trained)."""
    counts = turn_counts(ep)
    first = ep.turns[0].obs_ids if ep.turns else []
    rec = {
        "seed": ep.seed, "group_id": ep.group_id, "task_id": ep.task_id,
        "terminated": ep.terminated, "truncated": ep.truncated, "truncated_by": ep.truncated_by,
        "reward": ep.total_reward, "solved_at": solved_at(ep), "repeated": counts["repeated_answer_rate"][0] > 0,
        "tokens": ep.num_action_tokens, "latency_s": ep.latency_s, "error": ep.info.get("error"),
        "reference": next((t.info.get("reference") for t in ep.turns if "reference" in t.info), None),
        "opening": [m.as_dict() for m in ep.messages[:len(ep.messages) - sum(1 + len(t.feedback) for t in ep.turns)]],
        "prompt_tokens": len(first),
        "turns": [],
    }
    for t in ep.turns:
        rec["turns"].append({
            "text": t.text, "reward": t.reward, "answer": _jsonable(t.info.get("answer")),
            "correct": t.info.get("correct"), "valid": t.info.get("valid", True), "void": t.void,
            "cut_by_length": t.cut_by_length, "frozen": t.frozen, "tokens": t.num_tokens, "latency_s": t.latency_s,
            "obs_tokens": len(t.obs_ids), "feedback": [m.as_dict() for m in t.feedback],
            "pieces": [tokenizer.decode([i]) for i in t.action_ids] if tokenizer is not None and t.action_ids else None,
        })
    return rec


def _jsonable(v):
    return v if v is None or isinstance(v, (str, int, float, bool)) else str(v)


def _need(doc: dict, key: str, where: Path, kind: type | tuple = dict):
    if key not in doc:
        raise ResultsError(f"{where}: missing field {key!r}")
    if not isinstance(doc[key], kind):
        raise ResultsError(f"{where}: field {key!r} should be {getattr(kind, '__name__', kind)}")
    return doc[key]


def load_eval(path: str | Path) -> EvalResult:
    """Read a results directory (or its ``eval.json``)."""
    p = Path(path)
    f = p / EVAL_FILE if p.is_dir() else p
    if not f.is_file():
        raise ResultsError(f"{f}: not found (an eval results directory holds {EVAL_FILE} and {EPISODES_FILE})")
    try:
        doc = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ResultsError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ResultsError(f"{f}: field 'schema' should be {SCHEMA!r}, got {doc.get('schema') if isinstance(doc, dict) else doc!r}")
    meta, metrics = _need(doc, "meta", f), _need(doc, "metrics", f)
    for key, kind in (("seeds", list), ("max_turns", int), ("model", str)):
        _need(meta, key, f.with_name(f.name + ":meta"), kind)
    if "succ@1" not in metrics:
        raise ResultsError(f"{f}: metrics has no 'succ@1'")
    intervals = {k: tuple(v) for k, v in _need(doc, "intervals", f).items()}
    ep_file = f.parent / doc.get("episodes_file", EPISODES_FILE)
    if not ep_file.is_file():
        raise ResultsError(f"{ep_file}: not found (named by {f})")
    episodes = [rec for _, rec in iter_jsonl(ep_file, ResultsError, ("turns", "opening", "seed"), "episode record")]
    return EvalResult(metrics, intervals, meta, episodes)


def find_evals(run_dir: str | Path) -> list[Path]:
    """The eval result directories of a run, oldest step first; a results directory
    itself is returned alone."""
    d = Path(run_dir)
    if not d.is_dir():
        raise ResultsError(f"{d}: no such directory")
    if (d / EVAL_FILE).is_file():
        return [d]
    found = sorted(p.parent for p in (d / "evals").glob(f"step_*/{EVAL_FILE}"))
    if not found:
        raise ResultsError(f"{d}: no {EVAL_FILE} and no evals/step_*/{EVAL_FILE} "
                           "(expected an eval results directory or a training run directory)")
    return found
