"""Every ```python block in docs/*.md runs, so the chapters cannot rot.

The blocks of one chapter run in order in one shared namespace (a later block may use what an earlier one
defined), with matplotlib's non-interactive Agg backend; one test per chapter. The chapters are written to
be run from the repository root (`../shared/data/...`, `runs/...`); the test runs each one in a fresh
temporary folder that looks the same to it (`../shared` is the data folder beside the checkout), so what a
chapter writes never lands in the repository and every run starts clean (`tempfile` folders go there too).
A block fenced as ```python no-run is shown to the reader but not executed (for GPU, torchrun or long
examples). A failure's traceback points at the line in the Markdown file.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")


def python_blocks(markdown: str) -> list[tuple[int, str, bool]]:
    """(line number of the first code line, code, runs) for each ```python block, in order."""
    blocks = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, indent = opening["fence"], opening["indent"]
        words = opening["info"].split()
        body_start = i + 1
        i += 1
        while i < len(lines):
            closing = FENCE.match(lines[i])
            if closing and closing["fence"][0] == fence[0] and len(closing["fence"]) >= len(fence) \
                    and not closing["info"].strip():
                break
            i += 1
        if words and words[0] == "python":
            body = "\n".join(line[len(indent):] if line.startswith(indent) else line
                             for line in lines[body_start:i])
            blocks.append((body_start + 1, textwrap.dedent(body), "no-run" not in words[1:]))
        i += 1
    return blocks


def run_chapter(path: Path) -> int:
    """Execute the runnable blocks of one chapter in one namespace; returns how many ran."""
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for first_line, code, runs in python_blocks(path.read_text(encoding="utf-8")):
        if not runs:
            continue
        # pad with blank lines so that tracebacks give the line number in the Markdown file
        exec(compile("\n" * (first_line - 1) + code, str(path), "exec"), namespace)
        ran += 1
    return ran


def fresh_workdir(tmp: Path) -> Path:
    """An empty folder named like the checkout, with `../shared` pointing at the data folder beside it."""
    work = tmp / ROOT.name
    work.mkdir(parents=True)
    if (ROOT.parent / "shared").is_dir():
        (tmp / "shared").symlink_to(ROOT.parent / "shared", target_is_directory=True)
    return work


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.name for p in CHAPTERS])
def test_chapter_snippets_run(chapter, monkeypatch, tmp_path):
    import tempfile

    import matplotlib

    monkeypatch.setenv("MPLBACKEND", "Agg")
    matplotlib.use("Agg", force=True)
    monkeypatch.chdir(fresh_workdir(tmp_path))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # tempfile.mkdtemp() in a chapter, too
    import matplotlib.pyplot as plt

    try:
        run_chapter(chapter)
    finally:
        plt.close("all")


def test_block_extraction():
    markdown = textwrap.dedent("""\
        # Title
        ```python
        x = 1
        ```
        text
        ```bash
        echo not python
        ```
        ```python no-run
        raise SystemExit("never runs")
        ```
        1. a list item with code:

           ```python
           if x:
               y = x + 1
           ```
        ````python
        z = "```"
        ````
        """)
    blocks = python_blocks(markdown)
    assert blocks == [
        (3, "x = 1", True),
        (10, 'raise SystemExit("never runs")', False),
        (15, "if x:\n    y = x + 1", True),
        (19, 'z = "```"', True),
    ]


def test_a_failing_block_points_at_its_markdown_line(tmp_path):
    import traceback

    chapter = tmp_path / "chapter.md"
    chapter.write_text("# T\n\n```python\nvalue = 41\n```\n\nprose\n\n```python\nvalue += 1\n"
                       "assert value == 41, 'wrong'\n```\n")
    with pytest.raises(AssertionError, match="wrong") as info:
        run_chapter(chapter)
    last = traceback.extract_tb(info.value.__traceback__)[-1]
    assert (last.filename, last.lineno) == (str(chapter), 11)
    chapter.write_text("```python\nx = 1\n```\n```python no-run\nraise SystemExit\n```\n")
    assert run_chapter(chapter) == 1


def test_a_chapter_writes_into_its_own_fresh_folder_not_the_repository(tmp_path, monkeypatch):
    chapter = tmp_path / "chapter.md"
    chapter.write_text("```python\nfrom pathlib import Path\n"
                       "Path('runs/docs-probe').mkdir(parents=True)\n"  # fails if the folder is left from a run
                       "Path('runs/docs-probe/x.txt').write_text('x')\n```\n")
    for attempt in ("first", "second"):
        monkeypatch.chdir(fresh_workdir(tmp_path / attempt))
        assert run_chapter(chapter) == 1
        assert (tmp_path / attempt / ROOT.name / "runs" / "docs-probe" / "x.txt").read_text() == "x"
    assert not (ROOT / "runs" / "docs-probe").exists()
    if (ROOT.parent / "shared").is_dir():  # where the chapters' ../shared/data/... paths lead
        assert Path("../shared").resolve() == (ROOT.parent / "shared").resolve()
