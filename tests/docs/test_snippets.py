"""Every Python snippet of README.md and docs/*.md runs, so the docs cannot drift.

Each fenced ``python`` block is written to a file and run in its own process
(tests/docs/run_snippet.py: top-level ``await`` allowed) on a fresh local
store (``KONDUCTOR_STORE=local:...``), and must exit 0. An HTML comment on the
line before a block changes how it runs:

- ``<!-- not-run: REASON -->``: not executed (it needs a broker, a cluster's
  Job, runs forever, ...); the reason is required, and the block must still
  compile, so nothing is skipped silently.
- ``<!-- run: copies=N -->``: N copies run at once (a barrier of N replicas).
- ``<!-- run: kubernetes -->``: on the real API server, with the CRDs
  installed, in a fresh namespace.
- ``<!-- run: pytest -->``: the block is a test module, run by pytest.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.store.conftest import fresh_namespace

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("run_snippet.py")
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)
_MARK = re.compile(r"<!--\s*(not-run|run):\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int
    code: str
    mark: str  # "", "not-run", "run"
    arg: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def snippets() -> list[Snippet]:
    found = []
    for path in FILES:
        text = path.read_text()
        for m in _BLOCK.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            mark = _MARK.search(before)
            found.append(
                Snippet(path, line, m.group(1), mark[1] if mark else "", mark[2] if mark else "")
            )
    return found


ALL = snippets()


def test_there_are_snippets_and_every_skip_says_why() -> None:
    assert len(ALL) > 30
    for s in ALL:
        if s.mark == "not-run":
            assert len(s.arg) > 10, f"{s.id}: say why it does not run"
        if s.mark == "run":
            assert re.fullmatch(r"copies=\d+|kubernetes|pytest", s.arg), s.id


@pytest.mark.parametrize("snippet", [s for s in ALL if s.mark == "not-run"], ids=lambda s: s.id)
def test_snippets_that_do_not_run_still_compile(snippet: Snippet) -> None:
    compile(snippet.code, snippet.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    scrub = ("KUBECONFIG", "KONDUCTOR_STORE", "KONDUCTOR_NAMESPACE", "POD_NAME")
    base = {k: v for k, v in os.environ.items() if k not in scrub}
    store = {"KONDUCTOR_STORE": f"local:{tmp_path / 'konductor.db'}"}
    return {**base, "PYTHONPATH": str(ROOT), **store, **extra}


def _run(snippet: Snippet, tmp_path: Path, env: dict[str, str]) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(snippet.code)
    if snippet.arg == "pytest":
        script = tmp_path / "test_snippet.py"
        script.write_text(snippet.code)
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(script)]
        copies = 1
    else:
        argv = [sys.executable, str(RUNNER), str(script)]
        copies = int(snippet.arg.split("=")[1]) if snippet.arg.startswith("copies=") else 1
    procs = [
        subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(copies)
    ]
    try:
        for p in procs:
            out, err = p.communicate(timeout=90)
            assert p.returncode == 0, f"{snippet.id} exited {p.returncode}:\n{out}\n{err}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


@pytest.mark.parametrize(
    "snippet",
    [s for s in ALL if s.mark == "" or (s.mark == "run" and s.arg != "kubernetes")],
    ids=lambda s: s.id,
)
def test_snippet_runs_on_the_local_store(snippet: Snippet, tmp_path: Path) -> None:
    _run(snippet, tmp_path, _env(tmp_path))


@pytest.mark.kubernetes
@pytest.mark.parametrize(
    "snippet", [s for s in ALL if s.mark == "run" and s.arg == "kubernetes"], ids=lambda s: s.id
)
def test_snippet_runs_on_the_api_server(snippet: Snippet, tmp_path: Path, kube_crds: Any) -> None:
    ns = fresh_namespace(kube_crds)
    env = _env(
        tmp_path,
        KONDUCTOR_STORE="kubernetes",
        KUBECONFIG=str(kube_crds.admin_kubeconfig),
        KONDUCTOR_NAMESPACE=ns,
    )
    _run(snippet, tmp_path, env)
