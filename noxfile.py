"""Developer sessions: `nox -s tests lint typecheck demo bench`."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "venv"

ALL_EXTRAS = ".[dev,postgres,redis,console,kafka,metrics,otel,cli]"
RUFF = "ruff==0.17.6"  # keep in step with the dev extra in pyproject.toml
IMPORT_LINTER = "import-linter==2.17"  # likewise


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (PostgreSQL/Redis/Kafka tests need ACTORFLOW_PG_DSN /
    ACTORFLOW_REDIS_URL / ACTORFLOW_KAFKA_BOOTSTRAP)."""
    session.install("-e", ALL_EXTRAS)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, including the ASYNC (flake8-async) rules, and the import-linter layer contract."""
    paths = ["actorflow", "tests", "examples", "noxfile.py", "bench"]
    session.install(RUFF, IMPORT_LINTER)
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)
    session.run("lint-imports")  # the layer contract in pyproject.toml (docs/architecture.md)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.install("-e", ALL_EXTRAS)
    session.run("mypy")


@nox.session
def demo(session: nox.Session) -> None:
    """The newcomer's main job: the order-processing demo on the embedded SQLite store."""
    session.install("-e", ".")
    session.run("actorflow", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks; figures are ratios to baselines measured in the same run."""
    session.install("-e", ALL_EXTRAS)
    session.run("python", "-m", "bench", *session.posargs)
