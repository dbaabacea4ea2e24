#!/usr/bin/env bash
# Create .venv and install the pinned requirements and the churn package, once per change of
# requirements.txt/pyproject.toml (a stamp file holds their checksum). Checks Java 17+.
set -euo pipefail
cd "$(dirname "$0")/.."

java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1; }
if ! command -v java >/dev/null 2>&1 || [ "$(java_major)" -lt 17 ]; then
  echo "ERROR: Spark 4 needs Java 17 or newer on PATH (found: $(java -version 2>&1 | head -1 || echo none))." >&2
  echo "       Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless" >&2
  exit 1
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "WARNING: the pinned set is measured on Python 3.11; $("$PYTHON" --version) may not resolve." >&2
fi

stamp=".venv/.installed-$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
echo "==> installing pinned requirements into .venv (first run takes about 2 minutes)"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements.txt
.venv/bin/python -m pip install --quiet --no-deps -e .
.venv/bin/python -m pip check
rm -f .venv/.installed-*
touch "$stamp"
echo "==> .venv ready"
