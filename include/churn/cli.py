"""The command line every job shares: where the data lives and what it holds."""

from __future__ import annotations

import argparse


def job_parser(doc: str) -> argparse.ArgumentParser:
    """A job's parser, described by the first line of `doc`, with `--root` and `--spec`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--root", required=True,
                        help="storage root (a folder or s3://bucket/prefix)")
    parser.add_argument("--spec", required=True, help="dataset spec YAML")
    return parser
