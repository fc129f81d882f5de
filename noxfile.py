"""The test suite on every supported Python, each in its own venv: ``nox`` (or
``nox -s tests-3.13``; arguments after ``--`` go to pytest).

An interpreter that cannot be found is skipped with a message; with ``CI`` set, nox
fails instead (its own default), so CI cannot go green without a Python."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox

PYTHONS = ("3.11", "3.12", "3.13")

nox.options.default_venv_backend = "venv"


def interpreter(version: str) -> str:
    """``pythonX.Y`` from PATH if it runs, else pyenv's newest ``X.Y.*`` (its shims
    refuse a version that is installed but not selected), else the bare version."""
    name = f"python{version}"
    found = shutil.which(name)
    if found is not None and _runs(found):
        return found
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    installed = [
        path
        for path in (pyenv_root / "versions").glob(f"{version}.*/bin/{name}")
        if path.parent.parent.name.replace(".", "").isdigit() and _runs(str(path))
    ]
    if installed:
        newest = max(installed, key=lambda path: _patch(path.parent.parent.name))
        return str(newest)
    return version


def _runs(executable: str) -> bool:
    try:
        completed = subprocess.run(  # noqa: S603 - an interpreter found on this machine
            [executable, "-c", "pass"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return completed.returncode == 0


def _patch(release: str) -> tuple[int, ...]:
    return tuple(int(part) for part in release.split("."))


def _define_tests(version: str) -> None:
    # Never download a Python: a missing one is skipped (or fails under CI), as above.
    @nox.session(name=f"tests-{version}", python=interpreter(version), download_python="never")
    def tests(session: nox.Session) -> None:
        session.install("-e", ".[dev]")
        session.run("python", "-m", "pytest", "-p", "no:cacheprovider", *session.posargs)


for _version in PYTHONS:
    _define_tests(_version)
