"""`churn_runtime_env`: what the train task uploads to Ray (the repo's jobs, `churn` as shipped)."""

from __future__ import annotations

from pathlib import Path

import pathspec

from churn import packaging
from churn_airflow.ray_runtime import churn_runtime_env

REPO_ROOT = Path(__file__).resolve().parents[3]
PACKAGE = REPO_ROOT / "include" / "churn"


class TestChurnRuntimeEnv:
    def test_ships_ray_jobs_and_churn(self):
        env = churn_runtime_env("/repo", env_vars={"CHURN_DATA_ROOT": "/data"}, pip=["xgboost-cpu"])
        assert env == {
            "working_dir": str(Path("/repo/ray_jobs")),
            "py_modules": [str(Path("/repo/include/churn"))],
            "excludes": ["__pycache__/", "*.pyc", "*.pyo", "/demo.py", "/generate.py",
                         "/generate_faults.py", "/generate_model.py"],
            "env_vars": {"CHURN_DATA_ROOT": "/data"},
            "pip": ["xgboost-cpu"],
        }

    def test_optional_keys_left_out(self):
        env = churn_runtime_env(Path("/repo"), working_dir="/elsewhere")
        assert env["working_dir"] == "/elsewhere" and set(env) == {
            "working_dir", "py_modules", "excludes"}

    def test_uploads_what_the_spark_zip_ships(self):
        """Ray's matching of `excludes` (gitignore syntax, relative to the module directory)
        leaves the package's files the zip holds, nothing more."""
        excludes = pathspec.PathSpec.from_lines("gitwildmatch", churn_runtime_env(REPO_ROOT)[
            "excludes"])
        uploaded = sorted(path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*")
                          if path.is_file()
                          and not excludes.match_file(str(path.relative_to(PACKAGE))))
        shipped = [path.relative_to(PACKAGE).as_posix()
                   for path in packaging.package_files(PACKAGE)]
        assert uploaded == shipped
        assert not {"generate.py", "demo.py"} & set(uploaded)
