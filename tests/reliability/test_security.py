"""Security checks on the repository itself: no committed secrets, paths built only from safe keys."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from churn.storage import Layout, validate_ds

REPO_ROOT = Path(__file__).resolve().parents[2]

# Patterns of real credentials; the scan reports file and line of each hit.
SECRET_PATTERNS = {
    "aws_access_key_id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "aws_secret_access_key": re.compile(r"aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}"),
    "private_key": re.compile(r"-----BEGIN (RSA |EC |OPENSSH |)PRIVATE KEY-----"),
    "password_assignment": re.compile(
        r"(?i)\b(password|passwd|secret|token)\s*[=:]\s*['\"][^'\"\s${}<>]{8,}['\"]"),
}
# Test fixtures use moto's documented dummy credentials; they are not secrets.
ALLOWED_VALUES = ("testing", "test", "dummy", "example")


def tracked_files() -> list[Path]:
    """Files git tracks or would add (untracked, not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    return [REPO_ROOT / name for name in listed if (REPO_ROOT / name).is_file()]


def find_secrets(paths: list[Path]) -> list[str]:
    """Every line that looks like a credential, as `path:line: kind`."""
    hits = []
    for path in paths:
        try:
            text = path.read_text(errors="ignore")
        except OSError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            for kind, pattern in SECRET_PATTERNS.items():
                match = pattern.search(line)
                if match and not any(v in match.group(0).lower() for v in ALLOWED_VALUES):
                    shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
                    hits.append(f"{shown}:{number}: {kind}")
    return hits


class TestSecretScan:
    def test_repository_holds_no_secrets(self):
        files = tracked_files()
        assert len(files) > 20, "the scan must actually see the repository's files"
        assert find_secrets(files) == []

    def test_scanner_finds_a_planted_key(self, tmp_path):
        planted = tmp_path / "leak.py"
        fake_key = "AKIA" + "ABCDEFGHIJKLMNOP"  # built at run time so this file stays clean
        planted.write_text(f'AWS = "{fake_key}"\npassword = "hunter2hunter2"\n')
        hits = find_secrets([planted])
        assert [h.split(": ")[-1] for h in hits] == ["aws_access_key_id", "password_assignment"]


class TestPathSafety:
    @pytest.mark.parametrize("bad", ["../etc", "2026-01-01/../../x", "2026-13-01", "20260101",
                                     "2026-02-30", "", "2026-01-01 ", "ds=2026-01-01"])
    def test_bad_ds_is_refused_before_it_becomes_a_path(self, bad):
        with pytest.raises(ValueError):
            Layout("/data").features(bad)
        with pytest.raises(ValueError):
            validate_ds(bad)

    @pytest.mark.parametrize("bad", ["../models", "a/b", "", "x y"])
    def test_bad_names_are_refused(self, bad):
        with pytest.raises(ValueError):
            Layout("/data").model_version("churn_xgb", bad)
        with pytest.raises(ValueError):
            Layout("/data").raw(bad, "2026-01-01")
