"""`churn.versions`: the git code version (on a throwaway repo and on this checkout), the package
version and the installed library versions."""

from __future__ import annotations

import re
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from churn import versions
from tests.support.versions import expected_code_version, installed_versions

REPO_ROOT = Path(__file__).resolve().parents[2]
PINNED = "1.2.3"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                           *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A one-commit git repo with one tracked file, `CHURN_CODE_VERSION` unset."""
    monkeypatch.delenv(versions.CODE_VERSION_ENV, raising=False)
    _git(tmp_path, "init", "-q")
    (tmp_path / "tracked.py").write_text("x = 1\n")
    _git(tmp_path, "add", "tracked.py")
    _git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


class TestCodeVersion:
    def test_clean_checkout_is_the_full_commit(self, repo):
        assert versions.code_version(repo) == _git(repo, "rev-parse", "HEAD")
        assert re.fullmatch(r"[0-9a-f]{40}", versions.code_version(repo))

    def test_a_modified_tracked_file_makes_it_dirty(self, repo):
        (repo / "tracked.py").write_text("x = 2\n")
        assert versions.code_version(repo) == _git(repo, "rev-parse", "HEAD") + "-dirty"

    def test_an_untracked_file_does_not(self, repo):
        (repo / "scratch.txt").write_text("notes")
        assert versions.code_version(repo) == _git(repo, "rev-parse", "HEAD")

    def test_from_a_subdirectory(self, repo):
        (repo / "sub").mkdir()
        assert versions.code_version(repo / "sub") == _git(repo, "rev-parse", "HEAD")

    def test_env_wins(self, repo, monkeypatch):
        monkeypatch.setenv(versions.CODE_VERSION_ENV, PINNED)
        assert versions.code_version(repo) == PINNED

    def test_outside_git(self, tmp_path, monkeypatch):
        monkeypatch.delenv(versions.CODE_VERSION_ENV, raising=False)
        assert versions.code_version(tmp_path) == "unknown"
        assert versions.code_version(tmp_path / "missing") == "unknown"

    def test_this_checkout(self, monkeypatch):
        monkeypatch.delenv(versions.CODE_VERSION_ENV, raising=False)
        assert versions.code_version(REPO_ROOT) == expected_code_version(REPO_ROOT)


class TestPackageVersion:
    def test_is_the_installed_churn(self):
        assert versions.package_version() == metadata.version("churn")


class TestLibraryVersions:
    def test_installed_versions_and_none_for_a_missing_one(self):
        got = versions.library_versions((*versions.LIBRARIES, "no-such-package-xyz"))
        assert got == {**installed_versions(versions.LIBRARIES), "no-such-package-xyz": None}
