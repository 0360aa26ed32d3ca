"""The version matrix: worker_mode's tests on every supported Python x Django pair, the site's on one.

    make matrix                                  # every cell of the grid, then a summary
    .venv/bin/nox -s "matrix(py3.13-django6.1)"  # one cell (``nox -l`` lists them)
    .venv/bin/nox -s site                        # the site's full suite on the default pair

A cell is a virtualenv made from the cell's interpreter, the project installed into it by
``scripts/bootstrap.sh`` (the pip commands of ``make install``, whatever they become) with Django held
to the cell's series by a pip constraint, then pytest on ``WORKER_MODE_TESTS`` against SQLite and the
private redis-server the test session starts (tests/conftest.py). Interpreters are looked for on PATH
and in pyenv's ``~/.pyenv/versions/X.Y.*``. A pair Django does not support is skipped, and says so; a
Python found nowhere is skipped too, except under CI (``CI`` set), where it fails the cell, as nox
treats a missing interpreter by default there. Arguments after ``--`` go to pytest.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent

#: The tests of worker_mode itself (the reusable app), the ones every cell runs. A new test module
#: about worker_mode goes here; the site's other tests (workflows, imports, the cluster end to end)
#: run on the default pair only (the ``site`` session, ``make test``).
WORKER_MODE_TESTS = [
    "tests/test_mode.py",
    "tests/test_registry.py",
    "tests/test_checks.py",
    "tests/test_middleware.py",
    "tests/test_queues.py",
    "tests/test_workers.py",
    "tests/test_commands.py",
    "tests/test_node.py",
    "tests/test_presence.py",
    "tests/test_supervisor.py",
    "tests/test_launcher.py",
    "tests/test_pacing.py",
    "tests/test_claims.py",
    "tests/test_metrics.py",
    "tests/test_coverage.py",
    "tests/test_periodic.py",
    "tests/test_admin.py",
    "tests/test_rq_urls.py",
    "tests/test_tasks_backend.py",
    "tests/test_package.py",
]

PYTHONS = ["3.11", "3.12", "3.13"]
#: Where pyenv keeps its builds (besides PATH, where interpreters are looked for).
PYENV_VERSIONS = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
#: Django series -> the pip constraint that holds a cell to it, and the oldest Python it supports.
DJANGOS = {
    "5.2": ("Django>=5.2,<6.0", (3, 10)),
    "6.0": ("Django>=6.0,<6.1", (3, 12)),
    "6.1": ("Django>=6.1,<6.2", (3, 12)),
}
#: The pair ``make test`` (and CI's first pass) runs the whole suite on.
DEFAULT_PAIR = ("3.11", "5.2")
#: Prints the Python and Django series an interpreter runs: ``3.13 6.1``.
PAIR = "import django, sys; print('%d.%d' % sys.version_info[:2], '%d.%d' % django.VERSION[:2])"

nox.options.sessions = ["matrix"]
nox.options.default_venv_backend = "venv"  # as scripts/bootstrap.sh makes .venv


def _version(python: str) -> tuple[int, int]:
    major, minor = python.split(".")
    return int(major), int(minor)


def _candidates(python: str) -> list[str]:
    """Where an interpreter of ``python`` (``"3.12"``) may be: PATH first, then pyenv's builds,
    newest patch release first."""
    found = [path] if (path := shutil.which(f"python{python}")) else []
    builds = [
        p for p in PYENV_VERSIONS.glob(f"{python}.*") if re.fullmatch(rf"{re.escape(python)}\.\d+", p.name)
    ]
    builds.sort(key=lambda p: int(p.name.rsplit(".", 1)[1]), reverse=True)
    found += [str(p / "bin" / f"python{python}") for p in builds]
    return found


@cache
def interpreter(python: str) -> str | None:
    """The real executable of a working ``python`` interpreter that can make virtualenvs, or None.

    Each candidate is asked (a pyenv shim of a version pyenv has not selected fails; a Debian Python
    without python3-venv cannot make one), and answers with its own path, shims resolved.
    """
    probe = "import sys, ensurepip, venv; print(sys.executable); print('%d.%d' % sys.version_info[:2])"
    for candidate in _candidates(python):
        try:
            answer = subprocess.run(
                [candidate, "-c", probe], capture_output=True, text=True, timeout=30, check=True
            ).stdout.split()
        except (OSError, subprocess.SubprocessError):
            continue
        if len(answer) == 2 and answer[1] == python:
            return answer[0]
    return None


def _cells() -> list[nox.param]:
    cells = []
    for python in PYTHONS:
        for django in DJANGOS:
            path = interpreter(python) if _supported(python, django) is None else None
            # python=False: no virtualenv for a cell that only reports why it is skipped.
            cells.append(nox.param(path or False, python, django, id=f"py{python}-django{django}"))
    return cells


def _supported(python: str, django: str) -> str | None:
    """Why Django ``django`` cannot run on Python ``python``, or None."""
    oldest = DJANGOS[django][1]
    if _version(python) < oldest:
        return f"Django {django} needs Python >= {oldest[0]}.{oldest[1]}; this cell has Python {python}"
    return None


def install(session: nox.Session, python: str, django: str) -> None:
    """Install the project into the session's virtualenv as ``make install`` does (its script, given
    the virtualenv nox made), Django held to the ``django`` series by a pip constraint: the project's
    own requirements decide the rest, so the cell fails to install if they exclude that series."""
    constraints = Path(session.create_tmp()) / "django-constraint.txt"
    constraints.write_text(DJANGOS[django][0] + "\n")
    session.run(
        str(ROOT / "scripts" / "bootstrap.sh"),
        python,
        session.virtualenv.location,
        env={"PIP_CONSTRAINT": str(constraints)},
        external=True,
    )
    # What the cell ran on, for its log.
    session.run("python", "-m", "pip", "freeze", "--quiet", "--exclude-editable")


def pytest(session: nox.Session, *paths: str) -> None:
    """pytest on ``paths`` against SQLite in the session's own directory."""
    var = Path(session.create_tmp()) / "var"
    session.run(
        "python",
        "-m",
        "pytest",
        *paths,
        *session.posargs,
        env={"VAR_DIR": str(var), "DATABASE_URL": f"sqlite:///{var / 'db.sqlite3'}"},
    )


@nox.session
@nox.parametrize("python,python_version,django", _cells())
def matrix(session: nox.Session, python_version: str, django: str) -> None:
    """worker_mode's tests on one Python x Django pair."""
    reason = _supported(python_version, django)
    if reason:
        session.skip(reason)
    if interpreter(python_version) is None:
        message = (
            f"Python {python_version} not found (looked for python{python_version} on PATH and in "
            f"{PYENV_VERSIONS}/{python_version}.*)"
        )
        if os.environ.get("CI"):
            session.error(message)
        session.skip(message)
    install(session, interpreter(python_version), django)
    pair = session.run("python", "-c", PAIR, silent=True).split()
    if tuple(pair) != (python_version, django):
        session.error(f"the cell installed Python {pair[0]} with Django {pair[1]}")
    pytest(session, *WORKER_MODE_TESTS)


@nox.session(python=False)
def site(session: nox.Session) -> None:
    """The site's full suite on the default pair: ``make test`` (CI's first pass), its virtualenv
    made from Python 3.11 when it does not exist yet."""
    make = ["make", f"PYTHON={python}"] if (python := interpreter(DEFAULT_PAIR[0])) else ["make"]
    session.run(*make, "install", external=True)
    pair = session.run(str(ROOT / ".venv" / "bin" / "python"), "-c", PAIR, external=True, silent=True)
    python_version, django = pair.split()
    session.log(f".venv runs Python {python_version} with Django {django}")
    if (python_version, django) != DEFAULT_PAIR:
        session.warn(f"not the default pair, Python {DEFAULT_PAIR[0]} with Django {DEFAULT_PAIR[1]}")
    pytest_args = [f"PYTEST_ARGS={shlex.join(session.posargs)}"] if session.posargs else []
    session.run(*make, "test", *pytest_args, external=True)
