"""Hostile files for ``actorflow trigger --from-file``, found by probing the table parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.test_cli import app as app
from tests.cli.test_cli import run_cli


def test_a_line_that_is_not_utf8_is_refused_alone(
    app: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # It was "unexpected UnicodeDecodeError" for the whole file, and no run started.
    (tmp_path / "runs.jsonl").write_bytes(
        b'"ok-1"\n\xff\xfe\x00garbage\n"ok-2"\n{"foreign_id": "a\\u0000b"}\n'
    )
    code, out, err = run_cli(
        capsys, "trigger", "--from-file", "runs.jsonl", "--app", f"{app}:workflow"
    )
    assert code == 1
    assert out.strip() == "started 2 run(s); 2 refused"
    assert "line 2: not UTF-8 text" in err
    assert "line 4: " in err and "NUL" in err
    assert "unexpected" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ("worker", "{app}:workflow", "--gateway", "127.0.0.1:0", "--token", ""),
        (
            "worker",
            "{app}:workflow",
            "--gateway",
            "127.0.0.1:0",
            "--token",
            "t",
            "--read-only-token",
            "",
        ),
        ("watch", "--url", "ws://127.0.0.1:1/", "--token", ""),
    ],
)
def test_an_empty_token_is_a_usage_error_not_an_open_gateway(
    app: str, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    # `--token "$SECRET"` with SECRET unset served the gateway without a token.
    code, _, err = run_cli(capsys, *(arg.format(app=app) for arg in argv))
    assert code == 2
    assert "is empty" in err
