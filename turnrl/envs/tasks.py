"""Task sources: where questions and checkable answers come from.

A task source is a sized, indexable collection of :class:`Task`. Built in: a
synthetic arithmetic generator (free-form or multiple choice) with deterministic,
disjoint train/eval splits, and local JSONL / CSV / Parquet files (GSM8K format too).
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from turnrl.envs.answers import parse_number
from turnrl.jsonl import iter_jsonl


class DataError(ValueError):
    """A dataset row or file that cannot be used; the message names file and line."""


def check_prompt_template(template: str) -> None:
    """A file source's prompt: ``{question}`` and nothing else to fill in (``{{`` for a brace)."""
    if "{question}" not in template:
        raise ValueError(f"prompt_template: {template!r} has no {{question}}: every prompt would be the same text")
    try:
        template.format(question="")
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
        raise ValueError(f"prompt_template: {template!r}: only {{question}} can be filled in (write {{{{ and }}}} "
                         f"for a literal brace): {type(e).__name__}: {e}") from None


@dataclass(frozen=True)
class Task:
    id: str
    question: str  # the full prompt shown to the model
    answer: str  # reference answer (a choice letter for multiple choice)
    verifier: str = "math"  # key of turnrl.envs.answers.VERIFIERS
    extractor: str = "auto"  # key of turnrl.envs.answers.EXTRACTORS
    choices: tuple[str, ...] = ()  # option values, A, B, ... in order
    operands: tuple[int, ...] = ()  # for arithmetic: a reply may only name these numbers in an equation
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


class TaskSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Task: ...


# -- synthetic arithmetic ---------------------------------------------------------------

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _stable_hash(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


class ArithmeticTasks:
    """Arithmetic questions with difficulty knobs.

    Splits are disjoint by construction: each question text is hashed into a bucket,
    ``eval_fraction`` of the buckets belong to ``eval``, the rest to ``train``; task ``i``
    of a split is the first candidate from seed ``(i, attempt)`` that lands in that split.
    """

    LETTERS = "ABCDEFGH"

    def __init__(
        self,
        split: Literal["train", "eval"] = "train",
        digits: int = 2,
        operators: str = "+",
        operands: int = 2,
        multiple_choice: bool = False,
        num_choices: int = 4,
        size: int = 100_000,
        eval_fraction: float = 0.1,
        seed: int = 0,
    ):
        if split not in ("train", "eval"):
            raise ValueError(f"split={split!r} must be 'train' or 'eval'")
        bad = set(operators) - set(_OPS)
        if bad or not operators:
            raise ValueError(f"operators={operators!r}: each must be one of {''.join(_OPS)}")
        if digits < 1 or operands < 2 or not 2 <= num_choices <= len(self.LETTERS):
            raise ValueError(f"need digits>=1, operands>=2, 2<=num_choices<=8 (got {digits}, {operands}, {num_choices})")
        self.split, self.digits, self.operators, self.operands = split, digits, operators, operands
        self.multiple_choice, self.num_choices = multiple_choice, num_choices
        self.size, self.eval_fraction, self.seed = size, eval_fraction, seed

    def __len__(self) -> int:
        return self.size

    def distinct(self) -> int | None:
        """Distinct questions of this split (None: too many to count, > 10**6 expressions)."""
        lo, hi = 10 ** (self.digits - 1) if self.digits > 1 else 0, 10**self.digits - 1
        if (hi - lo + 1) ** self.operands * len(self.operators) ** (self.operands - 1) > 10**6:
            return None
        exprs = [" ".join(f"{n} {o}" for n, o in zip(nums, ops)) + f" {nums[-1]}"
                 for nums in itertools.product(range(lo, hi + 1), repeat=self.operands)
                 for ops in itertools.product(self.operators, repeat=self.operands - 1)]
        return sum(1 for e in exprs if self.split_of(e) == self.split)

    def split_of(self, expr: str) -> str:
        bucket = _stable_hash("split", self.seed, expr) % 10_000
        return "eval" if bucket < self.eval_fraction * 10_000 else "train"

    def __getitem__(self, index: int) -> Task:
        if not 0 <= index < self.size:
            raise IndexError(index)
        for attempt in range(10_000):
            rng = random.Random(_stable_hash(self.seed, self.split, index, attempt))
            lo, hi = 10 ** (self.digits - 1) if self.digits > 1 else 0, 10**self.digits - 1
            nums = [rng.randint(lo, hi) for _ in range(self.operands)]
            ops = [rng.choice(self.operators) for _ in range(self.operands - 1)]
            expr = " ".join(f"{n} {o}" for n, o in zip(nums, ops)) + f" {nums[-1]}"
            if self.split_of(expr) == self.split:
                break
        value = eval_expr(nums, ops)
        if not self.multiple_choice:
            q = f"What is {expr}? Answer with just the number."
            return Task(f"arith-{self.split}-{index}", q, str(value), "numeric", "last_number", operands=tuple(nums))
        options = self._distractors(value, rng)
        letters = self.LETTERS[: self.num_choices]
        lines = "\n".join(f"{l}) {v}" for l, v in zip(letters, options))
        q = f"What is {expr}?\n{lines}\nAnswer with just the letter."
        answer = letters[options.index(value)]
        return Task(f"arith-mc-{self.split}-{index}", q, answer, "choice", "choice", choices=tuple(map(str, options)))

    def _distractors(self, value: int, rng: random.Random) -> list[int]:
        """Plausible wrong options: off by 1, 10, 100 in either direction, shuffled."""
        pool = [value + d for d in (1, -1, 10, -10, 2, -2, 100, -100, 11, -11)]
        pool = [p for p in dict.fromkeys(pool) if p != value]
        rng.shuffle(pool)
        options = [value, *pool[: self.num_choices - 1]]
        rng.shuffle(options)
        return options


def eval_expr(nums: list[int], ops: list[str]) -> int:
    """Evaluate with the usual precedence (``*`` before ``+``/``-``)."""
    terms, signs = [nums[0]], []
    for op, n in zip(ops, nums[1:]):
        if op == "*":
            terms[-1] = terms[-1] * n
        else:
            terms.append(n)
            signs.append(op)
    total = terms[0]
    for s, t in zip(signs, terms[1:]):
        total = _OPS[s](total, t)
    return total


# -- local files -----------------------------------------------------------------------

_GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.S)


class FileTasks:
    """Questions from a local JSONL, CSV or Parquet file.

    ``answer_format="gsm8k"`` takes the final answer after ``#### `` in the answer field.
    Every row is validated when the file is loaded; a bad row raises :class:`DataError`
    naming the file and line (JSONL/CSV line number; Parquet row index).
    """

    def __init__(
        self,
        path: str | Path,
        question_field: str = "question",
        answer_field: str = "answer",
        answer_format: Literal["plain", "gsm8k"] = "plain",
        verifier: str = "math",
        extractor: str = "auto",
        prompt_template: str = "{question}",
        limit: int | None = None,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: {'a directory, not a file' if self.path.is_dir() else 'file not found'}")
        check_prompt_template(prompt_template)
        self.question_field, self.answer_field = question_field, answer_field
        self.answer_format, self.verifier, self.extractor = answer_format, verifier, extractor
        self.prompt_template = prompt_template
        try:
            self.tasks = [self._task(line, row) for line, row in self._rows()]
        except UnicodeDecodeError as e:
            raise DataError(f"{self.path}: not UTF-8 text ({e.reason})") from None
        if limit is not None:
            self.tasks = self.tasks[:limit]
        if not self.tasks:
            raise DataError(f"{self.path}: no rows")

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> Task:
        return self.tasks[index]

    def _rows(self):
        suffix = self.path.suffix.lower()
        if suffix in (".jsonl", ".json"):
            yield from iter_jsonl(self.path, DataError)
        elif suffix == ".csv":
            with self.path.open(encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                try:
                    for row in reader:
                        if None in row:  # csv puts values past the header's columns under None
                            raise DataError(f"{self.path}:{reader.line_num}: more values than the header's "
                                            f"{len(reader.fieldnames)} columns")
                        yield reader.line_num, row
                except csv.Error as e:
                    raise DataError(f"{self.path}:{reader.line_num}: {e}") from None
        elif suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(self.path)
            except (pa.ArrowException, OSError) as e:
                raise DataError(f"{self.path}: not a readable Parquet file ({e})") from None
            for i, row in enumerate(table.to_pylist()):
                yield f"row {i}", row
        else:
            raise DataError(f"{self.path}: unsupported file type {suffix!r} (use .jsonl, .csv or .parquet)")

    def _task(self, line, row: dict) -> Task:
        where = f"{self.path}:{line}"
        for name in (self.question_field, self.answer_field):
            if name not in row:
                raise DataError(f"{where}: missing field {name!r} (row has {sorted(row)})")
            if row[name] is None or (isinstance(row[name], str) and not row[name].strip()):
                raise DataError(f"{where}: field {name!r} is empty ({row[name]!r})")
        answer = str(row[self.answer_field])
        if self.answer_format == "gsm8k":
            m = _GSM8K_ANSWER.search(answer)
            if not m:
                raise DataError(f"{where}: field {self.answer_field!r} has no '#### <answer>' line")
            answer = m.group(1).replace(",", "")
        if self.verifier == "numeric" or self.answer_format == "gsm8k":
            if parse_number(answer) is None:
                raise DataError(f"{where}: answer {answer!r} is not a number")
        q = self.prompt_template.format(question=str(row[self.question_field]))
        return Task(f"{self.path.stem}-{line}", q, answer, self.verifier, self.extractor)


def split_tasks(source: TaskSource, split: str, eval_size: int, seed: int = 0) -> "IndexView":
    """Deterministic disjoint split of a file source: a seeded permutation; the first
    ``eval_size`` items are the eval split, the rest train, less any row whose question
    is also an eval question (a file with duplicate rows would otherwise train on them;
    the view's ``dropped`` counts them)."""
    order = list(range(len(source)))
    random.Random(seed).shuffle(order)
    where = getattr(source, "path", "task source")
    if eval_size >= len(order):
        raise DataError(f"{where}: eval_size={eval_size} leaves no training rows "
                        f"(the source has {len(order)})")
    if split == "eval":
        return IndexView(source, order[:eval_size])
    held = {source[i].question for i in order[:eval_size]}
    train = [i for i in order[eval_size:] if source[i].question not in held]
    if not train:
        raise DataError(f"{where}: no training rows left: all "
                        f"{len(order) - eval_size} rows outside the eval split repeat one of its {eval_size} questions")
    return IndexView(source, train, dropped=len(order) - eval_size - len(train))


def held_out_file(train: TaskSource, held: TaskSource) -> "IndexView":
    """The eval split from a file of its own (a benchmark's test file): its rows less
    those whose question also occurs in the training file (``dropped`` counts them)."""
    seen = {train[i].question for i in range(len(train))}
    keep = [i for i in range(len(held)) if held[i].question not in seen]
    if not keep:
        raise DataError(f"every question of the eval file also occurs in the training file ({len(held)} rows)")
    return IndexView(held, keep, dropped=len(held) - len(keep))


def distinct_tasks(tasks: TaskSource) -> int | None:
    """How many distinct questions a task source holds (None: too many to count)."""
    if hasattr(tasks, "distinct"):
        return tasks.distinct()
    return len({tasks[i].question for i in range(len(tasks))})


class IndexView:
    def __init__(self, source: TaskSource, indices: list[int], dropped: int = 0):
        self.source, self.indices, self.dropped = source, indices, dropped

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Task:
        return self.source[self.indices[index]]
