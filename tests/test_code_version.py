"""A model card or output names the code that made it: the package version and, from a git checkout,
the commit and whether the tree differed from it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from livescope import __version__
from livescope.code_version import code_version, git_suffix


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    _git(tmp_path, "init", "-q")
    (tmp_path / "train.py").write_text("steps = 1168\n")
    _git(tmp_path, "add", "train.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    return tmp_path


def test_a_clean_checkout_is_named_by_its_commit(checkout: Path) -> None:
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert git_suffix(checkout) == f"g{head[:12]}"


def test_changed_tracked_code_is_marked_dirty(checkout: Path) -> None:
    (checkout / "train.py").write_text("steps = 2000\n")
    assert re.fullmatch(r"g[0-9a-f]{12}\.dirty", git_suffix(checkout) or "")


def test_untracked_files_do_not_make_it_dirty(checkout: Path) -> None:
    (checkout / "notes.txt").write_text("scratch")
    assert not (git_suffix(checkout) or "").endswith(".dirty")


def test_changed_documents_or_models_are_not_code(checkout: Path) -> None:
    (checkout / "card.yaml").write_text("version: 1\n")
    _git(checkout, "add", "card.yaml")
    _git(checkout, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "a model")
    (checkout / "card.yaml").write_text("version: 2\n")
    assert not (git_suffix(checkout) or "").endswith(".dirty")


def test_outside_a_checkout_there_is_no_commit(tmp_path: Path) -> None:
    assert git_suffix(tmp_path) is None


def test_the_recorded_version_is_a_pep440_version_starting_with_the_package_version() -> None:
    version = code_version()
    assert version == __version__ or re.fullmatch(re.escape(__version__) + r"\+g[0-9a-f]{12}(\.dirty)?", version)
