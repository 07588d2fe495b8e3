"""Every ```python block of README.md and docs/*.md runs, unchanged.

A block runs in a namespace of its own (``__name__ == "__main__"``, in a temporary working
directory). Markers in an HTML comment on the line before the opening fence:

- ``<!-- fragment -->``: the block continues the previous block of the same file (same
  namespace), so a page can explain a program piece by piece;
- ``<!-- skip: reason -->``: the block is not run; the reason is reported by pytest. A skipped
  block starts a namespace of its own, and the fragments that continue it are skipped too.

A block may use top-level ``await`` / ``async with`` (it then runs under ``trio.run``). After
each block, every ``test*`` function it defined is called like pytest would: an
``async def`` test under ``trio.run``, with ``autojump_clock`` (a MockClock with
autojump_threshold=0), ``mock_clock``, ``tmp_path`` or a ``@pytest.fixture`` defined by the
blocks as arguments.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE_OPEN = re.compile(r"^```python\s*$")
_FENCE_CLOSE = re.compile(r"^```\s*$")
_FRAGMENT = re.compile(r"^<!--\s*fragment\s*-->\s*$")
_SKIP = re.compile(r"^<!--\s*skip:\s*(?P<reason>.+?)\s*-->\s*$")


@attrs.frozen
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    fragment: bool
    skip: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def extract_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a Markdown file, with their markers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if not _FENCE_OPEN.match(lines[i]):
            i += 1
            continue
        start = i
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        body: list[str] = []
        i += 1
        while i < len(lines) and not _FENCE_CLOSE.match(lines[i]):
            body.append(lines[i])
            i += 1
        if i >= len(lines):
            raise AssertionError(f"{path}:{start + 1}: ```python block is never closed")
        skip = _SKIP.match(previous)
        blocks.append(
            Block(
                path=path,
                line=start + 1,
                code="\n".join(body) + "\n",
                fragment=bool(_FRAGMENT.match(previous)),
                skip=skip.group("reason") if skip else None,
            )
        )
        i += 1
    return blocks


def chains() -> Iterator[Any]:
    """One pytest param per block that starts a namespace, with its fragments."""
    for path in DOC_FILES:
        chain: list[Block] = []
        for block in extract_blocks(path):
            if block.fragment and chain:
                chain.append(block)
                continue
            if chain:
                yield _param(chain)
            chain = [block]
        if chain:
            yield _param(chain)


def _param(chain: list[Block]) -> Any:
    head = chain[0]
    marks = [pytest.mark.skip(reason=f"{head.where}: {head.skip}")] if head.skip else []
    return pytest.param(chain, id=head.where, marks=marks)


def _fixture_args(
    fn: Callable[..., Any], namespace: dict[str, Any], tmp_path: Path
) -> tuple[dict[str, Any], trio.abc.Clock | None]:
    kwargs: dict[str, Any] = {}
    clock: trio.abc.Clock | None = None
    for name in inspect.signature(fn).parameters:
        if name == "autojump_clock":
            clock = kwargs[name] = trio.testing.MockClock(autojump_threshold=0)
        elif name == "mock_clock":
            clock = kwargs[name] = trio.testing.MockClock()
        elif name == "tmp_path":
            kwargs[name] = tmp_path
        elif name in namespace and hasattr(namespace[name], "_get_wrapped_function"):
            fixture = namespace[name]._get_wrapped_function()
            fixture_kwargs, _ = _fixture_args(fixture, namespace, tmp_path)
            kwargs[name] = fixture(**fixture_kwargs)
        else:
            raise AssertionError(f"{fn.__name__}: no fixture {name!r} for a docs block")
    return kwargs, clock


def _run_block(block: Block, namespace: dict[str, Any], tmp_path: Path) -> None:
    source = "\n" * (block.line) + block.code  # tracebacks point at the Markdown line
    code = compile(
        source, str(block.path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )
    before = dict(namespace)
    if code.co_flags & inspect.CO_COROUTINE:

        async def top_level() -> None:
            await eval(code, namespace)

        trio.run(top_level)
    else:
        exec(code, namespace)
    for name, value in list(namespace.items()):
        if not name.startswith("test") or before.get(name) is value:
            continue
        if not inspect.isfunction(value):
            continue
        kwargs, clock = _fixture_args(value, namespace, tmp_path)
        if inspect.iscoroutinefunction(value):
            trio.run(functools.partial(value, **kwargs), clock=clock)
        else:
            value(**kwargs)


@pytest.mark.parametrize("chain", list(chains()))
def test_docs_block_runs(
    chain: list[Block], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for block in chain:
        if block.skip:
            continue
        try:
            _run_block(block, namespace, tmp_path)
        except BaseException as exc:
            exc.add_note(f"in the ```python block at {block.where}")
            raise


def test_markers_are_recognised() -> None:
    """A marker that is almost right (a typo) would silently do nothing: refuse it."""
    for path in DOC_FILES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith("<!--") and re.search(r"fragment|skip", stripped):
                assert _FRAGMENT.match(stripped) or _SKIP.match(stripped), (
                    f"{path.relative_to(ROOT)}:{number}: unrecognised marker {stripped!r}; "
                    "use <!-- fragment --> or <!-- skip: reason -->"
                )


def test_the_runner_runs_tests_fragments_and_skips(tmp_path: Path) -> None:
    """The runner itself: a fragment shares the namespace, a skipped block does not run,
    and a test function a block defines is called (under the autojump clock)."""
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nimport trio\nseen = []\n```\n\n"
        "<!-- skip: not run -->\n```python\nraise RuntimeError\n```\n\n"
        "```python\nseen.append(0)\n```\n\n"
        "<!-- fragment -->\n```python\n"
        "async def test_an_hour(autojump_clock):\n"
        "    await trio.sleep(3600)\n"
        "    seen.append(trio.current_time())\n"
        "```\n",
        encoding="utf-8",
    )
    blocks = extract_blocks(page)
    assert [(b.fragment, b.skip) for b in blocks] == [
        (False, None),
        (False, "not run"),
        (False, None),
        (True, None),
    ]
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for block in (blocks[0], blocks[3]):
        _run_block(block, namespace, tmp_path)
    assert namespace["seen"] == [3600.0]
