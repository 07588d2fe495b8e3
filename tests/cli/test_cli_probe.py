"""Hostile command lines and files, written from docs/cli.md: every bad input is one line
on stderr (``actorflow: error: ...``) with exit code 1 or 2, never an "unexpected" error,
and a bad line of ``trigger --from-file`` is refused alone.

Defects found by this probe (each test below failed before its fix):

- JSON nested too deeply to read (``[[[...]]]``) in ``--initial`` or in one line of
  ``--from-file`` was "unexpected RecursionError" and, for the file, no run started;
- ``callback --data`` with bytes that are not UTF-8 (Python reads them as lone
  surrogates) was "unexpected UnicodeEncodeError";
- a file starting with a UTF-8 byte order mark had its first line refused as "not JSON";
- refused lines were listed out of file order (parse errors first, then the rest);
- a foreign id or reason holding control characters (an escape sequence, a carriage
  return, a newline) was printed raw by ``runs list|show|history``, ``pause``... and
  ``watch``: stored text could drive the terminal and break the tables' lines.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_cli import app as app
from tests.cli.test_cli import ok, run_cli

DEEP = "[" * 5000 + "]" * 5000  # small, yet far deeper than Python's recursion limit


def clean(err: str) -> None:
    """One-line errors only: no unexpected error, no traceback."""
    assert "unexpected" not in err, err
    assert "Traceback" not in err, err


def test_deeply_nested_initial_is_a_usage_error(
    app: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "trigger", "f", "--app", f"{app}:workflow", "--initial", DEEP)
    assert (code, out) == (2, "")
    assert "--initial is not valid JSON" in err and "nested too deeply" in err
    clean(err)


def test_bad_lines_of_a_file_are_refused_alone_in_file_order(
    app: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ref = f"{app}:workflow"
    lines = [
        '"ok-1"',
        DEEP,
        '{"foreign_id": NaN}',
        '"ok-1"',  # a run of ok-1 is unfinished: refused by the store, after the chunk
        '{"foreign_id": "x", "start": [1]}',
        '{"foreign_id": "y", "initial": ' + DEEP + "}",
        "{",
        '{"foreign_id": 5}',
        '"ok-2"',
    ]
    (tmp_path / "runs.jsonl").write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")
    code, out, err = run_cli(capsys, "trigger", "--from-file", "runs.jsonl", "--app", ref)
    clean(err)
    assert code == 1
    assert out.strip() == "started 2 run(s); 7 refused"
    refused = [line.split(":")[0] for line in err.splitlines() if line.startswith("line ")]
    assert refused == [f"line {n}" for n in (2, 3, 4, 5, 6, 7, 8)]
    assert "line 2: not JSON: it is nested too deeply to read" in err
    assert "line 3: not JSON: NaN" in err
    records = json.loads(ok(capsys, "runs", "list", "--app", ref, "--json"))
    assert sorted(r["foreign_id"] for r in records) == ["ok-1", "ok-2"]


def test_callback_data_that_is_not_utf8_reaches_the_callback_as_its_bytes(
    app: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = f"{app}:workflow"
    ok(capsys, "trigger", "f", "--app", ref, "--start", "MIDDLE")
    # "\udcff" is how Python reads the argument byte 0xff; the callback gets b"\xff",
    # which it cannot decode: the callback's own failure, one line, exit 1.
    code, out, err = run_cli(capsys, "callback", "f", "MIDDLE", "--data", "\udcff", "--app", ref)
    clean(err)
    assert code == 1 and out == ""
    assert "UnicodeEncodeError" not in err
    assert "UnicodeDecodeError" in err  # raised by the application's callback
    code, out, err = run_cli(capsys, "callback", "f", "MIDDLE", "--data", "paid", "--app", ref)
    assert code == 0, err
    assert "END" in out


@pytest.mark.parametrize(
    ("argv", "exit_code"),
    [
        (["trigger", "f", "--initial", "[1]"], 2),
        (["trigger", "f", "--initial", "1e999"], 2),
        (["trigger", "f", "--initial", '{"note": "' + "x" * 10 + '", "note2": 1}'], 2),
        (["trigger", "f", "--initial", '{"yin": ' + "9" * 5000 + "}"], 2),
        (["trigger", "f", "--start", "\udcff"], 2),
        (["trigger", "f" * 600], 2),
        (["trigger", "--from-file", "."], 1),
        (["trigger", "--from-file", "no-such-file.jsonl"], 1),
        (["callback", "f", "MIDDLE", "--file", "."], 2),
        (["callback", "f", "MIDDLE", "--data", "x", "--file", "-"], 2),
        (["pause", "\udcff"], 2),
        (["pause", ""], 2),
        (["runs", "show", "\x01\x02"], 1),
        (["runs", "list", "--limit", "0"], 2),
        (["runs", "list", "--limit", "9" * 40], 2),
        (["runs", "list", "--after", "\udcff"], 2),
        (["runs", "list", "--status", "NOPE,END"], 2),
        (["runs", "list", "--status", ""], 2),  # names nothing: not "every status"
        (["runs", "list", "--status", " , "], 2),
        (["runs", "list", "--run-state", ""], 2),
        (["runs", "list", "--run-state", "sleeping"], 2),
        (["runs", "list", "--workflow", "nope"], 2),
    ],
)
def test_hostile_arguments_are_one_line_errors(
    app: str, capsys: pytest.CaptureFixture[str], argv: list[str], exit_code: int
) -> None:
    code, out, err = run_cli(capsys, *argv, "--app", f"{app}:workflow")
    assert code == exit_code, err
    assert out == ""
    assert err.startswith("actorflow: error: ") and err.count("\n") == 1, err
    clean(err)


HOSTILE_TEXT = "evil\x1b[2J\x1b[31mred\rover\nnext\x9b31m\u2028\u202eright-to-left\x07"


def no_terminal_controls(text: str) -> None:
    for character in "\x1b\r\x9b\u2028\u202e\x07":
        assert character not in text, repr(text)


def test_stored_text_cannot_drive_the_terminal_or_break_lines(
    app: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A foreign id or a reason is whatever a client sent (through the gateway, say): the
    tables, ``runs show``, ``watch`` lines and the one-line results print it escaped."""
    ref = f"{app}:workflow"
    run_id = ok(capsys, "trigger", HOSTILE_TEXT, "--app", ref).strip()
    outputs = [
        ok(capsys, "pause", run_id, "--reason", HOSTILE_TEXT, "--app", ref),
        ok(capsys, "runs", "list", "--app", ref),
        ok(capsys, "runs", "show", run_id, "--app", ref),
        ok(capsys, "runs", "history", run_id, "--app", ref),
    ]
    for out in outputs:
        no_terminal_controls(out)
        assert "evil\\x1b[2J\\x1b[31mred" in out  # the foreign id or the reason, escaped
    assert "evil\\x1b[2J\\x1b[31mred\\x0dover\\x0anext\\x9b31m\\u2028\\u202e" in outputs[2]
    pause, table, _, history = outputs
    assert pause.count("\n") == 1
    assert table.count("\n") == 2 and history.count("\n") == 3  # a header and a line each
    records = json.loads(ok(capsys, "runs", "history", run_id, "--app", ref, "--json"))
    assert records[0]["foreign_id"] == HOSTILE_TEXT  # --json keeps the text exact
    from actorflow.cli.format import change_line

    line = change_line(records[-1])  # what `actorflow watch` prints for a change
    no_terminal_controls(line)
    assert "\n" not in line


def test_a_reader_that_stops_early_ends_the_command_quietly(app: str, tmp_path: Path) -> None:
    """``actorflow graph ... | head -0``: the reader is gone before the first line; the
    command ends with 141 (as if killed by SIGPIPE), without "Broken pipe" on stderr."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader has gone: every write to the pipe fails
    try:
        done = subprocess.run(
            [sys.executable, "-m", "actorflow.cli", "graph", f"{app}:workflow"],
            stdout=write,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr
    assert done.stderr == b"", done.stderr
