"""Template-collapse diagnostics of held-out evaluations (RAGEN-2, arXiv 2604.06268).

A policy can keep a high entropy yet answer every input with the same template. The
diagnostic scores every sampled output against every sampled input,
``scores[i, j] = log p(y_j | x_i)`` (x_i: an episode's first-turn prompt ids, y_j: the
first-turn reply ids, total log-prob under the policy at temperature 1), and reads:

- retrieval accuracy: the share of outputs j whose own input scores best,
  ``argmax_i scores[i, j] == j``; a tie among m best inputs that include j counts 1/m
  (the expected hit of a uniform tie-break), so a collapsed policy (all rows equal)
  scores 1/n;
- a mutual-information proxy, the InfoNCE lower bound on I(X;Y) with the policy as
  critic (van den Oord et al. 2018):
  ``mean_j [scores[j, j] - log mean_i exp(scores[i, j])]`` in nats; 0 when the output
  does not depend on the input, at most log n;
- beside them, the reply entropy: mean per-token entropy of the policy over the
  first-turn reply tokens (pooled over tokens), at temperature 1.

``top_first_answer_share`` needs no model: the share of episodes whose first reply is
the most common one (the env's parsed answer, or the stripped reply text where the
turn has none).
"""
from __future__ import annotations

import time
from collections import Counter

import numpy as np
import torch

from turnrl.metrics import bootstrap_ci
from turnrl.types import Episode, Turn


# -- pure functions ------------------------------------------------------------------------
def _check(scores) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] == 0:
        raise ValueError(f"score matrix must be square and non-empty, got shape {s.shape}")
    return s


def retrieval_hits(scores) -> np.ndarray:
    """Per output j: 1 if its own input i = j scores best, 1/m if it ties with m - 1
    other inputs at the best score, else 0. ``scores[i, j] = log p(y_j | x_i)``."""
    s = _check(scores)
    best = s.max(axis=0)  # (n,) best input score per output
    at_best = s == best[None, :]
    own = np.diag(at_best)
    return np.where(own, 1.0 / at_best.sum(axis=0), 0.0)


def retrieval_accuracy(scores) -> float:
    """Share of outputs whose own input gives the highest score (ties: see
    :func:`retrieval_hits`)."""
    return float(retrieval_hits(scores).mean())


def mi_terms(scores) -> np.ndarray:
    """Per output j: ``scores[j, j] - log mean_i exp(scores[i, j])`` (nats)."""
    s = _check(scores)
    n = s.shape[0]
    m = s.max(axis=0)
    lme = m + np.log(np.exp(s - m[None, :]).sum(axis=0)) - np.log(n)  # log mean_i exp, stable
    return np.diag(s) - lme


def mi_proxy(scores) -> float:
    """InfoNCE lower bound on I(X;Y) in nats: the mean of :func:`mi_terms`; 0 for a
    collapsed policy, at most ``log n``."""
    return float(mi_terms(scores).mean())


def first_answer_key(ep: Episode) -> str | None:
    """What an episode answered first: the parsed answer of its first live turn, else
    that reply's stripped text; None for an episode with no live turn."""
    turns = ep.live_turns
    if not turns:
        return None
    a = turns[0].info.get("answer")
    return f"answer: {a}" if a is not None else f"text: {turns[0].text.strip()}"


def top_first_answer(episodes: list[Episode]) -> tuple[str | None, float]:
    """The most common first reply and the share of episodes (with a live turn) that
    gave it; (None, 0.0) without any."""
    keys = [k for k in map(first_answer_key, episodes) if k is not None]
    if not keys:
        return None, 0.0
    key, count = Counter(keys).most_common(1)[0]
    return key, count / len(keys)


# -- the model-based part ----------------------------------------------------------------------
def collapse_sample(episodes: list[Episode], n: int) -> list[Episode]:
    """Up to ``n`` episodes in the given (seed) order with a first turn that has reply
    ids, one per distinct prompt (two equal prompts would tie every retrieval)."""
    out, seen = [], set()
    for ep in episodes:
        if len(out) >= n:
            break
        if not ep.turns or not ep.turns[0].action_ids or not ep.turns[0].obs_ids:
            continue
        key = tuple(ep.turns[0].obs_ids)
        if key not in seen:
            seen.add(key)
            out.append(ep)
    return out


@torch.no_grad()
def score_matrix(model, prompts: list[list[int]], replies: list[list[int]]) -> tuple[np.ndarray, float]:
    """``scores[i, j]`` = total log-prob of ``replies[j]`` after ``prompts[i]`` under
    ``model`` (temperature 1), and the mean per-token entropy over the tokens of each
    reply after its own prompt. One batched forward per prompt: the prompt is encoded
    once and its cache shared by the distinct replies (a collapsed policy's repeated
    replies are scored once)."""
    from turnrl.algos.logprobs import group_logprobs

    if len(prompts) != len(replies) or not prompts:
        raise ValueError(f"score_matrix needs as many prompts as replies (> 0), got {len(prompts)} and {len(replies)}")
    n = len(prompts)
    distinct = list(dict.fromkeys(tuple(y) for y in replies))
    col = [distinct.index(tuple(y)) for y in replies]  # reply j -> its distinct reply
    was_training = model.training
    model.eval()
    scores = np.zeros((n, n))
    ents: list[torch.Tensor] = []
    try:
        for i, x in enumerate(prompts):
            eps = [Episode(turns=[Turn(obs_ids=list(x), action_ids=list(y), action_logprobs=[0.0] * len(y))],
                           group_id=i) for y in distinct]
            lps, ent = group_logprobs(model, eps, with_entropy=True)
            totals = [float(lp.double().sum()) for lp in lps]
            scores[i] = [totals[c] for c in col]
            ents.append(ent[col[i]].float())
    finally:
        model.train(was_training)
    return scores, float(torch.cat(ents).mean())


def collapse_metrics(episodes: list[Episode], model, sample: int) -> tuple[dict, dict, dict]:
    """(metrics, intervals, meta) of an evaluation's episodes: ``top_first_answer_share``
    always; with a model and ``sample`` > 0 also ``retrieval_accuracy``, ``mi_proxy``
    (with 95% bootstrap intervals over the sampled outputs), ``reply_entropy``,
    ``collapse_n`` and ``collapse_seconds``. ``meta`` says what was scored, or why not."""
    top, share = top_first_answer(episodes)
    metrics = {"top_first_answer_share": share}
    intervals: dict = {}
    meta: dict = {"top_first_answer": top}
    if sample <= 0:
        meta["scores"] = "off (eval.collapse_sample = 0)"
        return metrics, intervals, meta
    if model is None:
        meta["scores"] = "not computed: the runner has no model (an endpoint run has no token ids)"
        return metrics, intervals, meta
    picked = collapse_sample(episodes, sample)
    if len(picked) < 2:
        meta["scores"] = f"not computed: {len(picked)} episode(s) with a distinct first prompt and reply ids (needs 2)"
        return metrics, intervals, meta
    t0 = time.time()
    scores, entropy = score_matrix(model, [e.turns[0].obs_ids for e in picked], [e.turns[0].action_ids for e in picked])
    hits, terms = retrieval_hits(scores), mi_terms(scores)
    metrics.update({"retrieval_accuracy": float(hits.mean()), "mi_proxy": float(terms.mean()),
                    "reply_entropy": entropy, "collapse_n": float(len(picked)),
                    "collapse_seconds": time.time() - t0})
    intervals.update({"retrieval_accuracy": bootstrap_ci(hits), "mi_proxy": bootstrap_ci(terms)})
    meta["scores"] = (f"log p(first reply j | first prompt i), total over tokens, temperature 1, on {len(picked)} "
                      f"episodes (seeds {[e.seed for e in picked]}); mi_proxy: InfoNCE bound, at most "
                      f"log {len(picked)} = {np.log(len(picked)):.3f} nats")
    return metrics, intervals, meta


def model_of(runner):
    """The policy a runner samples from, if it has one in this process (``EngineRunner``
    on an engine with a ``model``); None for an endpoint."""
    return getattr(getattr(runner, "engine", None), "model", None)


def check_collapse_config(runner, ev) -> None:
    """``eval.collapse_sample`` set explicitly on a runner without a model would be
    ignored: one clear error before the evaluation starts."""
    if "collapse_sample" in ev.model_fields_set and ev.collapse_sample > 0 and model_of(runner) is None:
        raise ValueError(f"eval.collapse_sample = {ev.collapse_sample} would be ignored: {getattr(runner, 'name', 'this runner')} "
                         "has no model in this process (an endpoint run has no token ids); remove it or set 0")
