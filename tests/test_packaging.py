"""The release: sdist and wheel build, pass ``twine check``, carry the license and metadata,
install into a fresh venv outside the repository, and the sdist's own tests collect."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path

import pytest
from trove_classifiers import classifiers as known_classifiers

from tests.installed import ROOT, Dist, FreshVenv, build, fresh_venv

PYTHONS = ("3.11", "3.12", "3.13")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    return build(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def installed(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    return fresh_venv(tmp_path_factory.mktemp("fresh"), dist.wheel)


def wheel_metadata(dist: Dist) -> Message:
    with zipfile.ZipFile(dist.wheel) as wheel:
        (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        return HeaderParser().parsestr(wheel.read(name).decode())


def test_twine_check_passes_for_both(dist: Dist) -> None:
    result = subprocess.run(  # noqa: S603 - fixed argument list
        [sys.executable, "-m", "twine", "check", "--strict", str(dist.sdist), str(dist.wheel)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_the_wheel_and_the_sdist_carry_the_license(dist: Dist) -> None:
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License")
    with zipfile.ZipFile(dist.wheel) as wheel:
        (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert wheel.read(name).decode() == license_text
    with tarfile.open(dist.sdist) as sdist:
        member = sdist.extractfile(f"{dist.sdist.name.removesuffix('.tar.gz')}/LICENSE")
        assert member is not None
        assert member.read().decode() == license_text


def test_the_wheel_metadata_says_what_the_release_is(dist: Dist) -> None:
    metadata = wheel_metadata(dist)
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Author"] == "The quartsess developers"
    urls = dict(value.split(", ", 1) for value in metadata.get_all("Project-URL", []))
    assert {"Homepage", "Documentation", "Source", "Issues", "Changelog"} <= set(urls)
    assert all(url.startswith("https://") for url in urls.values())
    classifiers = metadata.get_all("Classifier", [])
    for python in PYTHONS:
        assert f"Programming Language :: Python :: {python}" in classifiers
    assert "Typing :: Typed" in classifiers
    assert "Framework :: AsyncIO" in classifiers
    # PyPI refuses an upload with a classifier it does not know.
    assert set(classifiers) <= known_classifiers, set(classifiers) - known_classifiers


def test_the_long_description_has_no_links_that_only_work_in_a_clone() -> None:
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)]+)\)", readme)
    assert targets
    relative = [target for target in targets if not target.startswith(("https://", "#"))]
    assert relative == []


def test_the_changelog_names_every_released_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(version)} - \d{{4}}-\d\d-\d\d$", changelog, re.M)


def test_the_wheel_installs_into_a_fresh_venv_and_imports(installed: FreshVenv) -> None:
    result = installed.run(
        "python",
        "-c",
        "import importlib.metadata as m, quartsess; "
        "print(quartsess.__file__); print(m.version('quartsess')); "
        "print(sorted(quartsess.__all__) == sorted(n for n in quartsess.__all__ "
        "if hasattr(quartsess, n)))",
    )
    module_file, version, all_present = result.stdout.split()
    assert Path(module_file).is_relative_to(installed.site_packages)
    assert not Path(module_file).is_relative_to(ROOT)
    assert (Path(module_file).parent / "py.typed").exists()
    assert version == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert all_present == "True"
    help_text = installed.run("python", "-m", "quart", "sessions", "--help").stdout
    assert "gen-key" in help_text


def test_the_sdist_holds_every_test_module_and_its_tests_collect(
    dist: Dist, tmp_path: Path
) -> None:
    with tarfile.open(dist.sdist) as sdist:
        sdist.extractall(tmp_path, filter="data")
    unpacked = tmp_path / dist.sdist.name.removesuffix(".tar.gz")
    shipped = {path.name for path in (unpacked / "tests").glob("*.py")}
    in_repo = {path.name for path in (ROOT / "tests").glob("*.py")}
    assert in_repo <= shipped, in_repo - shipped

    def collect(folder: Path) -> list[str]:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return [line for line in result.stdout.splitlines() if "::" in line]

    from_sdist = collect(unpacked)
    assert from_sdist == collect(ROOT)
    assert len({node.split("::")[0] for node in from_sdist}) == len(
        [name for name in in_repo if name.startswith("test_")]
    )


def test_the_wheel_ships_the_repositorys_alembic_folder_as_is(dist: Dist) -> None:
    """One copy of each revision: the wheel's quartsess/_migrations is alembic/ itself."""
    in_repo = {
        path.relative_to(ROOT / "alembic").as_posix(): path.read_bytes()
        for path in (ROOT / "alembic").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert "versions/0001_create_sessions_table.py" in in_repo
    with zipfile.ZipFile(dist.wheel) as wheel:
        shipped = {
            name.removeprefix("quartsess/_migrations/"): wheel.read(name)
            for name in wheel.namelist()
            if name.startswith("quartsess/_migrations/")
        }
    assert shipped == in_repo
