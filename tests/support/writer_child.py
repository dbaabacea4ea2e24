"""A child process that writes a big partition through `atomic_partition` and stops midway.

Usage: python -m tests.support.writer_child PARTITION_URI CHUNKS

It writes half of CHUNKS 1 MiB chunks into the temporary partition, prints `midway <tmp dir>`
on stdout, then blocks reading stdin, so the parent can SIGKILL it at a known point (no sleep).
If stdin closes instead, it writes the rest and lets the partition swap in.
"""

from __future__ import annotations

import sys

from churn.storage import atomic_partition

CHUNK = b"x" * (1 << 20)


def main(uri: str, chunks: int) -> None:
    """Write `chunks` MiB into the partition at `uri`, pausing halfway for the parent."""
    with atomic_partition(uri) as tmp, open(f"{tmp}/part-00000.bin", "wb") as out:
        for _ in range(chunks // 2):
            out.write(CHUNK)
        out.flush()
        print(f"midway {tmp}", flush=True)
        sys.stdin.read()
        for _ in range(chunks - chunks // 2):
            out.write(CHUNK)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
