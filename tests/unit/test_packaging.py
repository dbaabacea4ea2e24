"""The `churn` zip shipped to Spark with --py-files."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from churn import packaging


def _fake_package(root):
    pkg = root / "churn"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("VALUE = 1\n")
    (pkg / "sub").mkdir()
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "mod.py").write_text("def f():\n    return 42\n")
    (pkg / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0bytecode")
    (pkg / "stale.pyc").write_bytes(b"\0")
    return pkg


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
        names = zipfile.ZipFile(path).namelist()
        assert {"churn/__init__.py", "churn/scoring.py", "churn/packaging.py"} <= set(names)
        assert path.name.startswith("churn-") and len(path.stem) == len("churn-") + 12
