"""Answer extraction and verification.

Extractors turn a model reply into an answer string (or None: no parseable answer).
Verifiers compare that string with the reference answer of a task.
"""
from __future__ import annotations

import math
import re
from typing import Callable

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)


def extract_answer_tag(text: str) -> str | None:
    found = _TAG.findall(text)
    return found[-1].strip() if found and found[-1].strip() else None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, with nested braces."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip() or None
    return None


def extract_last_number(text: str) -> str | None:
    found = re.findall(_NUMBER, text)
    return found[-1].replace(",", "") if found else None


LETTERS = "ABCDEFGH"  # option letters of multiple-choice tasks (up to 8 options)
_OPTION_LABEL = re.compile(r"^\s*\(?([A-H])[).:]\s", re.M)


def option_letters(question: str, num_choices: int | None = None) -> str:
    """The option letters of a multiple-choice question: the first ``num_choices`` of A-H
    when the task knows its options, else the run of labels ``A)``, ``(B)``, ``C.``, ``D:``
    that start lines of the question (from A on), else all of A-H."""
    if num_choices:
        return LETTERS[:num_choices]
    labelled = set(_OPTION_LABEL.findall(question))
    n = 0
    while n < len(LETTERS) and LETTERS[n] in labelled:
        n += 1
    return LETTERS[:n] if n >= 2 else LETTERS


def extract_choice(text: str, letters: str = LETTERS) -> str | None:
    """The single choice letter named in the reply (``B``, ``(B)``, ``B)``, ``answer: B``),
    among ``letters`` (the task's options: :func:`option_letters`). A reply naming several
    different letters is ambiguous: None."""
    inner = extract_answer_tag(text) or text
    found = set(re.findall(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", inner))
    return found.pop() if len(found) == 1 else None


_ANSWER_IS = re.compile(rf"answer\s*(?:is|:|=)\s*:?\s*\**\$?\s*({_NUMBER})", re.I)


def extract_explicit(text: str) -> str | None:
    """An answer the reply states as one: ``<answer>`` tag, ``\\boxed{}``, or a number
    after "the answer is" / "answer:". No last-number guess (for replies cut off by the
    token limit, whose last number is often a step of unfinished reasoning)."""
    stated = _ANSWER_IS.findall(text)
    return extract_answer_tag(text) or extract_boxed(text) or (stated[-1].replace(",", "") if stated else None)


def extract_auto(text: str) -> str | None:
    """``<answer>`` tag, then ``\\boxed{}``, then the last number."""
    return extract_answer_tag(text) or extract_boxed(text) or extract_last_number(text)


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "answer_tag": extract_answer_tag,
    "boxed": extract_boxed,
    "last_number": extract_last_number,
    "choice": extract_choice,
    "auto": extract_auto,
}


def parse_number(s: str) -> float | None:
    s = s.strip().replace(",", "").rstrip(".")
    s = s.removeprefix("$").strip()
    try:
        return float(s)
    except ValueError:
        frac = re.fullmatch(r"(-?\d+)\s*/\s*(\d+)", s)
        if frac and int(frac.group(2)) != 0:
            return int(frac.group(1)) / int(frac.group(2))
        return None


def verify_exact(pred: str, ref: str) -> bool:
    """UFO's check: lowercase, whitespace stripped, exact match (arXiv 2507.14295)."""
    return normalize(pred) == normalize(ref)


def verify_numeric(pred: str, ref: str, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    a, b = parse_number(pred), parse_number(ref)
    return a is not None and b is not None and math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)


def verify_math(pred: str, ref: str) -> bool:
    """Symbolic/numeric equivalence with the ``math-verify`` package."""
    from math_verify import parse, verify

    gold = parse(_as_latex(ref))
    answer = parse(_as_latex(pred))
    if not gold or not answer:
        return verify_numeric(pred, ref)
    try:
        return bool(verify(gold, answer))
    except Exception:  # math-verify can raise on exotic input; model output never crashes a run
        return False


def _as_latex(s: str) -> str:
    return s if "$" in s or "\\" in s else f"${s}$"


VERIFIERS: dict[str, Callable[[str, str], bool]] = {
    "exact": verify_exact,
    "numeric": verify_numeric,
    "math": verify_math,
    "choice": verify_exact,
}


def normalize(answer: str) -> str:
    """Normal form used for equality and for counting distinct answers."""
    s = answer.strip().lower()
    s = re.sub(r"\s+", "", s)
    n = parse_number(s)
    if n is not None and math.isfinite(n):  # "inf" / "nan" replies stay text, never crash a run
        return str(int(n)) if n == int(n) else repr(n)
    return s
