"""Every code block a user could run in README.md and docs/ is run by a test, as written, or says
why not.

A bash or python block carries a marker on the line before it:

* ``<!-- doc-test: run -->``: executed here, verbatim, in the repository against a fresh store;
* ``<!-- doc-test: run by tests/<file>.py -->``: executed by that test file (which must read it);
* ``<!-- doc-test: skip: <reason> -->``: cannot run in CI (a GPU, hours of training, a server);
* ``<!-- doc-test: illustration: <reason> -->``: a fragment, not meant to run.

Blocks without a language (output, diagrams) need no marker.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO

RUNNABLE = {"bash", "sh", "python"}
MARK = re.compile(r"<!-- doc-test: (run|run by (\S+)|skip: (\S.*?)|illustration: (\S.*?)) -->")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    code: str
    mark: str          # the marker's text after "doc-test: ", or "" when there is none

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    name = str(page.relative_to(REPO)) if page.is_relative_to(REPO) else page.name
    out = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").splitlines()
        prev = before[-1].strip() if before else ""
        mark = MARK.fullmatch(prev)
        out.append(Block(name, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2),
                         mark.group(1) if mark else ""))
    return out


def runnable() -> list[Block]:
    return [b for p in pages() for b in blocks(p) if b.lang in RUNNABLE]


def marked_run_by(test_file: str, page: str) -> list[Block]:
    """The blocks of ``page`` that say they are run by ``test_file`` (for that file to execute)."""
    return [b for b in blocks(REPO / page) if b.mark == f"run by {test_file}"]


def test_every_runnable_block_is_run_or_says_why_not():
    unmarked = [b.id for b in runnable() if not b.mark]
    assert not unmarked, f"code blocks without a doc-test marker (see this file's docstring): {unmarked}"


def test_a_block_run_by_another_test_is_read_by_it():
    for b in runnable():
        if b.mark.startswith("run by "):
            test_file = b.mark.removeprefix("run by ")
            source = (REPO / test_file).read_text() if (REPO / test_file).is_file() else ""
            assert "marked_run_by" in source and b.page in source, f"{b.id}: {test_file} does not run it"


def test_markers_have_reasons_and_the_parser_reads_them(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- doc-test: skip: needs a GPU -->\n```bash\nnvidia-smi\n```\n\n```bash\nls\n```\n"
                    "<!-- doc-test: skip:  -->\n```python\npass\n```\n```\noutput\n```\n")
    got = [(b.lang, b.line, b.mark) for b in blocks(page)]
    # a skip without a reason is no marker
    assert got == [("bash", 2, "skip: needs a GPU"), ("bash", 6, ""), ("python", 10, ""), ("", 13, "")]


@pytest.mark.e2e
@pytest.mark.parametrize("block", [b for b in runnable() if b.mark == "run"], ids=lambda b: b.id)
def test_block_runs_as_written(block, store):
    cmd = ["bash", "-euo", "pipefail", "-c", block.code] if block.lang != "python" else \
        [sys.executable, "-c", block.code]
    p = subprocess.run(cmd, cwd=REPO, env=store.env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"{block.id} failed ({p.returncode}):\n{p.stderr[-4000:]}"
    assert "Traceback" not in p.stderr


def test_every_relative_link_and_image_resolves():
    broken = []
    for page in pages():
        text = FENCE.sub("", page.read_text())
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            path = target.split("#")[0]
            if path and "://" not in path and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, broken
