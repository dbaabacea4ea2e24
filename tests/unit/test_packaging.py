"""The `churn` zip shipped to Spark with --py-files: what it holds, and that it runs."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

from churn import packaging

REPO_ROOT = Path(__file__).resolve().parents[2]
# Every module a Spark or Ray job may import. A new module of `churn` fails this test until it is
# listed here (shipped) or in `packaging.LOCAL_ONLY` (local only).
SHIPPED = ["__init__.py", "champion.py", "cli.py", "faults.py", "features.py", "gate.py",
           "history.py", "ingest.py", "labels.py", "landing.py", "manifest.py", "metrics.py",
           "model_version.py", "modeling.py", "packaging.py", "pipeline.py", "registry.py",
           "registry_cli.py", "scoring.py", "spark.py", "spec.py", "storage.py", "training.py",
           "versions.py"]
GENERATOR_AND_DEMO = ["demo.py", "generate.py", "generate_faults.py", "generate_model.py"]


def _fake_package(root):
    pkg = root / "churn"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("VALUE = 1\n")
    (pkg / "sub").mkdir()
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "mod.py").write_text("def f():\n    return 42\n")
    (pkg / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0bytecode")
    (pkg / "stale.pyc").write_bytes(b"\0")
    (pkg / "generate.py").write_text("raise RuntimeError('local only')\n")
    return pkg


def _churn_imports(path: Path) -> set[str]:
    """The `churn` modules a source file imports, at any depth (top level or in a function);
    `from churn import __version__` names no module and is left out."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "churn":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("churn."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("churn.")}
    return {name for name in found if (packaging.package_dir() / f"{name}.py").is_file()}


class TestBuildPackageZip:
    def test_ships_sources_only_and_imports_from_the_zip(self, tmp_path):
        pkg = _fake_package(tmp_path / "src")
        path = packaging.build_package_zip(tmp_path / "out", source=pkg)
        assert sorted(zipfile.ZipFile(path).namelist()) == ["churn/__init__.py", "churn/sub/__init__.py",
                                                              "churn/sub/mod.py"]
        out = subprocess.run([sys.executable, "-S", "-c",
                              "import sys; sys.path.insert(0, sys.argv[1]); "
                              "from churn.sub.mod import f; import churn; print(f() + churn.VALUE)",
                              str(path)], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "43"

    def test_same_sources_same_bytes_changed_sources_new_name(self, tmp_path):
        pkg = _fake_package(tmp_path / "src")
        first = packaging.build_package_zip(tmp_path / "a", source=pkg)
        again = packaging.build_package_zip(tmp_path / "b", source=pkg)
        assert first.name == again.name and first.read_bytes() == again.read_bytes()
        (pkg / "sub" / "mod.py").write_text("def f():\n    return 7\n")
        changed = packaging.build_package_zip(tmp_path / "a", source=pkg)
        assert changed.name != first.name
        assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([first.name, changed.name])

    def test_default_is_the_installed_package(self, tmp_path):
        path = packaging.build_package_zip(tmp_path)
        assert sorted(zipfile.ZipFile(path).namelist()) == [f"churn/{n}" for n in SHIPPED]
        assert path.name.startswith("churn-") and len(path.stem) == len("churn-") + 12


class TestLocalOnly:
    def test_the_generator_and_the_demo_are_not_shipped(self, tmp_path):
        assert sorted(packaging.LOCAL_ONLY) == GENERATOR_AND_DEMO
        names = set(zipfile.ZipFile(packaging.build_package_zip(tmp_path)).namelist())
        assert not {f"churn/{n}" for n in GENERATOR_AND_DEMO} & names
        assert all((packaging.package_dir() / n).is_file() for n in GENERATOR_AND_DEMO)

    def test_nothing_shipped_imports_a_local_only_module(self):
        jobs = [*(REPO_ROOT / "spark_jobs").glob("*.py"), *(REPO_ROOT / "ray_jobs").glob("*.py")]
        shipped = [packaging.package_dir() / n for n in SHIPPED]
        local_only = {n.removesuffix(".py") for n in packaging.LOCAL_ONLY}
        offenders = {path.name: sorted(_churn_imports(path) & local_only)
                     for path in [*jobs, *shipped]}
        assert {name: found for name, found in offenders.items() if found} == {}

    def test_every_churn_module_a_job_imports_is_shipped(self):
        jobs = [*(REPO_ROOT / "spark_jobs").glob("*.py"), *(REPO_ROOT / "ray_jobs").glob("*.py")]
        needed, todo = set(), set().union(*map(_churn_imports, jobs))
        while todo:  # the closure: what the jobs import, and what those modules import
            module = todo.pop()
            needed.add(module)
            todo |= _churn_imports(packaging.package_dir() / f"{module}.py") - needed
        assert {f"{m}.py" for m in needed} <= set(SHIPPED)
