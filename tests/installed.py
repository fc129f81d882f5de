"""Build the sdist and wheel with ``python -m build`` and install the wheel into a fresh
venv outside the repository, as a user of the release would.

Tests reach no network, so the build runs without isolation (the dev extra holds the build
backend) and the wheel is installed with ``--no-deps``; the fresh venv finds quartsess's
dependencies through a ``.pth`` line naming the test environment's site-packages, after
its own. Only the wheel's copy of quartsess is importable there: the editable install's
import hook lives in a ``.pth`` file of that site-packages, and ``.pth`` files are only
read from site directories, not from directories a ``.pth`` line adds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What a fresh clone does not have. A left-over *.egg-info/SOURCES.txt above all: setuptools
# adds every file it lists to the sdist, which would hide a file missing from MANIFEST.in.
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git", ".venv", "*.egg-info", "build", "dist", "__pycache__", "*.py[cod]", ".*_cache",
    "test-artifacts", "instance", "*.sqlite3*", "_build", "results",
)  # fmt: skip
BUILD_TIMEOUT = 300
RUN_TIMEOUT = 120


@dataclass(frozen=True)
class Dist:
    sdist: Path
    wheel: Path


@dataclass(frozen=True)
class FreshVenv:
    """A venv with only the built wheel installed; ``run`` works in a folder outside ROOT."""

    path: Path
    workdir: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        return Path(
            sysconfig.get_path("purelib", vars={"base": str(self.path), "platbase": str(self.path)})
        )

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
        }
        env["PATH"] = f"{self.path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return {**env, **(extra or {})}

    def run(
        self, *args: str | Path, extra_env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command of this venv (``python``, ``quart``...) in ``workdir``."""
        command = [str(self.path / "bin" / str(args[0])), *map(str, args[1:])]
        result = subprocess.run(  # noqa: S603 - fixed argument lists
            command,
            cwd=self.workdir,
            env=self.env(extra_env),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result


def build(outdir: Path) -> Dist:
    """``python -m build`` (sdist, then the wheel built from that sdist) into ``outdir``,
    from a copy of the source tree as a fresh clone has it."""
    source = outdir / "source"
    shutil.copytree(ROOT, source, ignore=NOT_IN_A_CLONE)
    result = subprocess.run(  # noqa: S603 - fixed argument list
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(outdir), str(source)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (sdist,) = outdir.glob("*.tar.gz")
    (wheel,) = outdir.glob("*.whl")
    return Dist(sdist=sdist, wheel=wheel)


def fresh_venv(folder: Path, wheel: Path) -> FreshVenv:
    """A new venv in ``folder`` (outside the repository) with ``wheel`` installed."""
    assert not folder.resolve().is_relative_to(ROOT)
    path = folder / "venv"
    venv.EnvBuilder(with_pip=True).create(path)
    created = FreshVenv(path=path, workdir=folder / "work")
    created.workdir.mkdir()
    own_site = Path(sysconfig.get_paths()["purelib"])
    (created.site_packages / "_quartsess_test_dependencies.pth").write_text(f"{own_site}\n")
    created.run("python", "-m", "pip", "install", "--no-deps", "--no-index", wheel)
    return created
