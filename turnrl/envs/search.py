"""Multi-hop question answering with a search tool: BM25 over a local corpus (bm25s).

The model searches with ``<search>query</search>`` (it sees the top documents) and
answers with ``<answer>...</answer>``. A small fictional corpus and question set ship in
``turnrl/envs/data`` (made by ``scripts/make_search_data.py``); pass your own JSONL
files (``{"id", "title", "text"}`` documents; ``{"id", "question", "answer"}`` questions).
"""
from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from turnrl.envs.base import Env
from turnrl.envs.tasks import DataError
from turnrl.jsonl import iter_jsonl
from turnrl.tools.base import Tool, ToolCall, ToolResult
from turnrl.types import Message, Step

_SEARCH = re.compile(r"<search>(.*?)</search>", re.S | re.I)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_ARTICLES = {"a", "an", "the", "river", "province", "of"}


def _data(name: str) -> Path:
    return Path(str(files("turnrl.envs").joinpath(f"data/{name}")))


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _ARTICLES]


def answer_matches(pred: str, gold: str) -> bool:
    """The gold answer's words, in order, inside a short reply ('the river Tallow' is Tallow)."""
    p, g = _words(pred), _words(gold)
    if not g or len(p) > len(g) + 5:
        return False
    return any(p[i:i + len(g)] == g for i in range(len(p) - len(g) + 1))


class BM25Index:
    def __init__(self, docs: list[dict]):
        import bm25s

        self.docs = docs
        self._bm25s = bm25s
        self.retriever = bm25s.BM25()
        self.retriever.index(bm25s.tokenize([f"{d['title']}. {d['text']}" for d in docs], stopwords="en",
                                            show_progress=False), show_progress=False)

    def search(self, query: str, k: int) -> list[dict]:
        tokens = self._bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not tokens.vocab:  # only stop words
            return []
        ids, scores = self.retriever.retrieve(tokens, k=min(k, len(self.docs)), show_progress=False)
        return [self.docs[int(i)] for i, s in zip(ids[0], scores[0]) if s > 0]


@lru_cache(maxsize=4)
def load_index(corpus: str) -> BM25Index:
    docs = [row for _, row in iter_jsonl(Path(corpus), DataError, ("id", "title", "text"), "document")]
    if not docs:
        raise DataError(f"{corpus}: no documents")
    return BM25Index(docs)


class SearchTool(Tool):
    name = "search"

    def __init__(self, index: BM25Index, top_k: int = 3):
        self.index, self.top_k = index, top_k

    def parse(self, action: str) -> ToolCall | None:
        found = _SEARCH.findall(action)
        if not found:
            return None
        q = found[-1].strip()
        return ToolCall(self.name, q, valid=bool(q), error="" if q else "empty query")

    def execute(self, call: ToolCall, state: dict) -> ToolResult:
        state["searches"] = state.get("searches", 0) + 1
        if not call.valid:
            return ToolResult(f"Search failed: {call.error}.", valid=False)
        hits = self.index.search(call.payload, self.top_k)
        if not hits:
            return ToolResult("No documents found.")
        return ToolResult("\n".join(f"[{i}] {d['title']}: {d['text']}" for i, d in enumerate(hits, 1)))


class SearchEnv(Env):
    """Reward 1 for a right answer (the episode ends at the first answer), else 0."""

    max_turns = 6

    def __init__(self, split: str = "train", max_turns: int | None = None, top_k: int = 3,
                 corpus: str | None = None, questions: str | None = None, eval_fraction: float = 0.25):
        if split not in ("train", "eval", "all"):
            raise ValueError(f"split={split!r} is not 'train', 'eval' or 'all'")
        self.max_turns = max_turns or self.max_turns
        self.tool = SearchTool(load_index(str(corpus or _data("search_corpus.jsonl"))), top_k)
        qpath = Path(questions or _data("search_questions.jsonl"))
        rows = [r for _, r in iter_jsonl(qpath, DataError, ("id", "question", "answer"), "question")]
        bucket = lambda r: int(hashlib.sha256(r["id"].encode()).hexdigest(), 16) % 1000 < eval_fraction * 1000  # noqa: E731
        self.questions = rows if split == "all" else [r for r in rows if bucket(r) == (split == "eval")]
        if not self.questions:
            raise DataError(f"{qpath}: no questions in the {split!r} split")
        self.q: dict | None = None

    def num_instances(self) -> int:
        return len({q["question"] for q in self.questions})

    def instance(self) -> str:
        return self.q["question"]

    def gold_answer(self) -> str:
        return f"<answer>{self.q['answer']}</answer>"

    def reset(self, seed: int) -> list[Message]:
        self.q = self.questions[seed % len(self.questions)]
        self.turn, self.tool_state = 0, {}
        return [Message("user", "Answer the question. You can search a collection of documents: write "
                                "<search>your query</search> and you will see the best matches. Search as often as you "
                                "need, one query per turn. When you know the answer, write <answer>the answer</answer>.\n"
                                f"Question: {self.q['question']}")]

    def step(self, action: str) -> Step:
        if self.q is None:
            raise RuntimeError("call reset() before step()")
        self.turn += 1
        last = self.turn >= self.max_turns
        info = {"reference": self.q["answer"], "task_id": self.q["id"]}
        answers = _ANSWER.findall(action)
        if answers:
            pred = answers[-1].strip()
            right = answer_matches(pred, self.q["answer"])
            return Step([], float(right), True, False, {**info, "searches": self.tool_state.get("searches", 0)},
                        valid=True, correct=right, answer=" ".join(_words(pred)))
        call = self.tool.parse(action)
        if call is None:
            return Step([] if last else [Message("user", "Write <search>query</search> or <answer>answer</answer>.")],
                        0.0, False, last, info, valid=False, correct=False)
        result = self.tool.execute(call, self.tool_state)
        return Step([] if last else [Message("user", result.observation)], 0.0, False, last,
                    {**info, "query": call.payload}, valid=result.valid, correct=False)


class TemplatePlayer:
    """Reference player for the shipped questions: follows each question's two hops with
    two searches, reading the entity it needs off the top document."""

    HOPS = {"river": (r"born in the town of (\w+)", r"on the river (\w+)"),
            "province": (r"born in the town of (\w+)", r"province of (\w+)"),
            "founder": (r"works for ([A-Z]\w+(?: [A-Z]\w+)?)\.", r"founded by ([A-Z]\w+ [A-Z]\w+)")}

    def __init__(self, env: SearchEnv):
        q = env.q["question"]
        self.kind = "river" if "river" in q else "province" if "province" in q else "founder"
        self.person = re.search(r"(?:where|was|that) ([A-Z]\w+ [A-Z]\w+)", q).group(1)
        self.hop = 0

    def act(self, messages: list[Message]) -> str:
        pattern = self.HOPS[self.kind][self.hop - 1] if self.hop else None
        self.hop += 1
        if pattern is None:
            return f"<search>{self.person}</search>"
        found = re.search(pattern, messages[-1].content)
        value = found.group(1) if found else "unknown"
        return f"<search>{value}</search>" if self.hop == 2 else f"<answer>{value}</answer>"
