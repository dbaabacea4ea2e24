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


# ------------------------------------------------------------------ credentials come from outside

CODE_DIRS = ("include", "plugins", "dags", "spark_jobs", "ray_jobs", "scripts", "bench")
CREDENTIAL_NAMES = {"aws_access_key_id", "aws_secret_access_key", "aws_session_token",
                    "access_key", "secret_key", "session_token", "token", "password",
                    "ray_auth_token", "auth_token"}


def credential_literals(source: str, name: str) -> list[str]:
    """Credential-named keywords, assignments and dict keys given a non-empty string literal."""
    import ast

    hits = []
    for node in ast.walk(ast.parse(source, name)):
        pairs = []
        if isinstance(node, ast.keyword) and node.arg:
            pairs.append((node.arg, node.value))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            pairs += [(t.id, node.value) for t in targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.Dict):
            pairs += [(k.value, v) for k, v in zip(node.keys, node.values)
                      if isinstance(k, ast.Constant) and isinstance(k.value, str)]
        for key, value in pairs:
            if (key.lower() in CREDENTIAL_NAMES and isinstance(value, ast.Constant)
                    and isinstance(value.value, str) and value.value):
                hits.append((value.lineno, f"{name}:{value.lineno}: {key}"))
    return [hit for _, hit in sorted(hits)]


class TestCredentialsComeFromConnectionsOrEnv:
    def test_no_credential_literal_in_pipeline_code(self, reliability_case):
        files = [p for d in CODE_DIRS for p in sorted((REPO_ROOT / d).rglob("*.py"))]
        assert len(files) > 20
        hits = [h for p in files
                for h in credential_literals(p.read_text(), str(p.relative_to(REPO_ROOT)))]
        assert hits == []
        reliability_case(f"AST scan of {len(files)} pipeline files for credential literals",
                         "none: AWS keys and the Ray token come from connections or env",
                         "keyword args, assignments and dict keys named like credentials")

    def test_scanner_finds_planted_literals(self):
        planted = ('boto3.client("s3", aws_secret_access_key="abc")\n'
                   'password = "hunter2"\nconn = {"token": "t0k"}\nok = {"token": token}\n')
        assert credential_literals(planted, "leak.py") == [
            "leak.py:1: aws_secret_access_key", "leak.py:2: password", "leak.py:3: token"]

    def test_ray_token_is_the_connection_password_or_a_token_file(self, tmp_path):
        from churn_airflow.hooks.ray_job import read_token

        token_file = tmp_path / "auth_token"
        token_file.write_text("file-token\n")
        assert read_token("conn-password", str(token_file)) == "conn-password"
        assert read_token("", str(token_file)) == "file-token"
        assert read_token(None, None) is None


# ------------------------------------------------------------------ local services on loopback

LOCAL_LAUNCHERS = {
    "scripts/ray_local.sh": ("--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1"),
    "tests/support/ray_head.py": ("--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1"),
    "scripts/airflow_standalone.sh": ("AIRFLOW__API__HOST=127.0.0.1",),
}


class TestLocalServicesBindLoopback:
    @pytest.mark.parametrize("path", sorted(LOCAL_LAUNCHERS))
    def test_launcher_binds_127_0_0_1(self, path, reliability_case):
        text = (REPO_ROOT / path).read_text()
        assert [flag for flag in LOCAL_LAUNCHERS[path] if flag not in text] == []
        assert "0.0.0.0" not in text
        assert not re.search(r"--dashboard-host[= ](?!127\.0\.0\.1)", text)
        reliability_case(f"{path}: bind flags", "binds 127.0.0.1 only",
                         ", ".join(LOCAL_LAUNCHERS[path]) + ", no 0.0.0.0")

    def test_running_ray_dashboard_listens_on_loopback_only(self, ray_head, reliability_case):
        """The dashboard (Jobs API) is on 127.0.0.1. Ray 2.60's gRPC servers (GCS, raylet, agent)
        listen on every interface whatever `--node-ip-address` says; token auth guards them."""
        import psutil

        def listening(port: int) -> set[str]:
            return {c.laddr.ip for c in psutil.net_connections("tcp")
                    if c.status == psutil.CONN_LISTEN and c.laddr.port == port}

        dashboard = listening(int(ray_head.dashboard_url.rsplit(":", 1)[1]))
        gcs = listening(int(ray_head.gcs_address.rsplit(":", 1)[1]))
        assert dashboard == {"127.0.0.1"}
        assert gcs and '"RAY_AUTH_MODE": "token"' in (
            REPO_ROOT / "tests/support/ray_head.py").read_text()
        reliability_case("a real Ray head from tests/support/ray_head.py",
                         f"dashboard listens on {sorted(dashboard)}; GCS on {sorted(gcs)} "
                         "(Ray binds gRPC to all interfaces; token auth on)",
                         "dashboard socket is 127.0.0.1 only; GCS needs the token")


# ------------------------------------------------------------------ params validated before paths

BAD_DS = ["../x", "2026-01-01/../../etc", "2026-13-01", "2026-01-01;rm"]


def _entry_points():
    from ray_jobs import train
    from spark_jobs import build_features, score

    return {"build_features": build_features.main, "score": score.main, "train": train.main}


class TestEntryPointsRefuseBadDs:
    @pytest.mark.parametrize("bad", BAD_DS)
    @pytest.mark.parametrize("job", ["build_features", "score", "train"])
    def test_bad_ds_is_refused_before_storage(self, job, bad, tmp_path, spec_path, capsys,
                                              reliability_case):
        root = tmp_path / "root"
        with pytest.raises((SystemExit, ValueError)) as refused:
            _entry_points()[job](["--root", str(root), "--spec", str(spec_path), "--ds", bad])
        assert not root.exists()
        if isinstance(refused.value, SystemExit):
            assert refused.value.code == 2 and "--ds" in capsys.readouterr().err
        reliability_case(f"{job} --ds {bad!r}", f"refused ({type(refused.value).__name__}) "
                         "before touching storage", "exit/raise, root never created")

    @pytest.mark.parametrize("field,value", [("name", "../../evil"), ("model_name", "a/b")])
    def test_spec_names_that_become_paths_are_validated(self, field, value, tmp_path,
                                                        spec_path):
        from churn.spec import SpecError, dump_spec, load_spec

        spec = load_spec(spec_path)
        payload = spec.model_dump(mode="json")
        if field == "name":
            payload["name"] = value
        else:
            payload["model"]["name"] = value
        bad = tmp_path / "bad.yaml"
        import yaml

        bad.write_text(yaml.safe_dump(payload))
        with pytest.raises((SpecError, ValueError)):
            load_spec(bad)
        assert dump_spec(spec)  # the untouched spec still round-trips

    def test_dag_passes_ds_only_from_the_logical_date(self):
        text = (REPO_ROOT / "dags" / "churn_pipeline.py").read_text()
        after_ds = re.findall(r'"--ds",\s*([^\],]+)', text)
        assert after_ds and set(after_ds) == {'"{{ ds }}"'}
        assert "params.ds" not in text and "conf.get(" not in text
