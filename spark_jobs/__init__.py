"""spark-submit entry points (importable so tests can call their `run` on a shared session)."""
