"""Shared pieces of the bad-input suite: run the ``attnseg`` command and check how it failed.

Every case calls the real command (``attnseg.cli.main``, in-process, which is what the console script runs) on
tiny files built at test time, and asserts the exit code (2 = bad input), that the message names the file or key
and the fix, and that no Python traceback reached the user.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from attnseg.cli import main

TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@pytest.fixture
def run_cli(capsys):
    """``run_cli(*argv) -> Result``: the command's exit code and what it printed; a traceback fails the test."""

    def run(*argv) -> Result:
        capsys.readouterr()
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse rejects bad arguments by exiting with 2
            rc = e.code if isinstance(e.code, int) else 2
        captured = capsys.readouterr()
        res = Result(rc, captured.out, captured.err)
        assert TRACEBACK not in res.text, f"a traceback reached the user:\n{res.text}"
        return res

    return run


def expect_bad(res: Result, *needles: str) -> str:
    """Assert exit code 2 and that every needle (case-insensitive) appears in the message; returns the message."""
    assert res.rc == 2, f"exit code {res.rc}, expected 2 (bad input); printed:\n{res.text}"
    low = res.text.lower()
    for n in needles:
        assert n.lower() in low, f"{n!r} missing from the message:\n{res.text}"
    return res.text


def tree_digest(root: Path) -> dict[str, str]:
    """path -> sha256 of every file under ``root``: compare before and after a failing command (nothing damaged)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}
