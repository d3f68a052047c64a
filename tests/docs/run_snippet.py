"""Run one documentation snippet as a script (top-level ``await`` allowed).

``python tests/docs/run_snippet.py FILE``: a snippet written for a notebook or
an async REPL (``async with Client() as client:`` at the top level) runs the
way Python's own ``python -m asyncio`` REPL would run it: compiled with
top-level await allowed, its coroutine driven by ``asyncio.run``.
"""

from __future__ import annotations

import ast
import asyncio
import sys
import types


def main(path: str) -> None:
    with open(path) as f:
        source = f.read()
    code = compile(source, path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    module = types.ModuleType("__main__")
    module.__file__ = path
    sys.modules["__main__"] = module
    result = eval(code, module.__dict__)
    if asyncio.iscoroutine(result):
        asyncio.run(result)


if __name__ == "__main__":
    main(sys.argv[1])
