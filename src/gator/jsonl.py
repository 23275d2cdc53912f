"""Reading JSONL (one JSON object per line), with errors that name the file and the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def jsonl_objects(path: str | Path, skipped: list[str] | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a line that is not a JSON object raises ValueError, or,
    when a `skipped` list is given, is left out and its error message appended to that list."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                problem = None if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}"
            except json.JSONDecodeError as err:
                problem = f"not valid JSON ({err.msg} at column {err.colno})"
            if problem is not None:
                if skipped is None:
                    raise ValueError(f"{path}, line {lineno}: {problem}")
                skipped.append(f"{path}, line {lineno}: {problem}")
                continue
            yield lineno, row
