"""Reading JSON Lines files whose every error names the file and line."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def iter_jsonl(path: Path, error: type[Exception], required: tuple[str, ...] = (), what: str = "row") -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, object)`` for each non-blank line; raise ``error`` naming
    ``path:line`` for invalid JSON, a non-object, or a missing ``required`` key."""
    with Path(path).open(encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{n}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise error(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise error(f"{path}:{n}: {what} has no {', '.join(map(repr, missing))}")
            yield n, row
