"""SMARTS substructure filter, checked with RDKit on candidate hits (RDKit imported on first use).

Bounded, because RDKit's matching is exponential for some patterns: `*~*~…~[U]` (34 atoms, 103
characters) took 40 s on one 70-atom polycyclic molecule and RDKit has no timeout of its own.

* Before matching, `compile_smarts` refuses patterns longer than MAX_SMARTS_CHARS characters,
  with more than MAX_SMARTS_ATOMS atoms or recursive SMARTS (`$(...)`) nested deeper than
  MAX_SMARTS_NESTING (SmartsTooComplex).
* While matching, a deadline: `InProcessMatcher` (the Python API and CLI) checks it between
  molecules; `SmartsWorker` (`mvclam serve`) matches in a child process and kills it when the
  deadline passes, so even one stuck match ends on time (SmartsTimeout).
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from mvclam.engine.search.errors import SearchError
from mvclam.engine.substructure import has_substructure, match_smiles

MAX_SMARTS_CHARS = 200
MAX_SMARTS_ATOMS = 40
MAX_SMARTS_NESTING = 3  # depth of recursive SMARTS, $(...) inside $(...)


class SmartsTooComplex(SearchError):
    """A SMARTS pattern refused before matching (too long, too many atoms, too deeply recursive)."""


class SmartsTimeout(SearchError):
    """SMARTS matching did not finish by its deadline."""


def _nesting(smarts: str) -> int:
    """The depth of recursive SMARTS `$(` ... `)` in `smarts`."""
    depth = deepest = 0
    stack: list[bool] = []  # per open parenthesis: whether it opened a recursive SMARTS
    for i, char in enumerate(smarts):
        if char == "(":
            recursive = i > 0 and smarts[i - 1] == "$"
            stack.append(recursive)
            depth += recursive
            deepest = max(deepest, depth)
        elif char == ")" and stack:
            depth -= stack.pop()
    return deepest


def compile_smarts(smarts: str | None) -> Any | None:
    """The RDKit query molecule for `smarts`, ``None`` for no filter; SearchError if invalid,
    SmartsTooComplex beyond the module's limits."""
    if not smarts:
        return None
    if len(smarts) > MAX_SMARTS_CHARS:
        raise SmartsTooComplex(f"SMARTS too complex: {len(smarts)} characters (at most {MAX_SMARTS_CHARS})")
    nesting = _nesting(smarts)
    if nesting > MAX_SMARTS_NESTING:
        raise SmartsTooComplex(
            f"SMARTS too complex: recursive SMARTS nested {nesting} deep (at most {MAX_SMARTS_NESTING})"
        )
    from rdkit import Chem, rdBase

    with rdBase.BlockLogs():
        pattern = Chem.MolFromSmarts(smarts)
    if pattern is None:
        raise SearchError(f"invalid SMARTS {smarts!r}")
    if pattern.GetNumAtoms() > MAX_SMARTS_ATOMS:
        raise SmartsTooComplex(
            f"SMARTS too complex: {pattern.GetNumAtoms()} atoms (at most {MAX_SMARTS_ATOMS})"
        )
    return pattern


def matches_smarts(pattern: Any, smiles: str | None) -> bool:
    """True when `smiles` parses and contains the compiled `pattern`."""
    return has_substructure(pattern, smiles)


def _timeout(seconds: float) -> SmartsTimeout:
    return SmartsTimeout(f"SMARTS matching took longer than {seconds:.1f} s")


class SmartsMatcher(Protocol):
    """Which of `smiles` contain the SMARTS `smarts`, by `deadline` (time.monotonic(); None: no
    bound), else SmartsTimeout."""

    def match(self, smarts: str, smiles: Sequence[str | None], deadline: float | None) -> list[bool]: ...


class InProcessMatcher:
    """Matches in this process; the deadline is checked between molecules (one stuck match is
    not interrupted: use SmartsWorker where that matters)."""

    def match(self, smarts: str, smiles: Sequence[str | None], deadline: float | None) -> list[bool]:
        started = time.monotonic()
        found = match_smiles(compile_smarts(smarts), smiles, deadline)
        if found is None:
            raise _timeout(time.monotonic() - started)
        return found


class SmartsWorker:
    """Matches in one child process with a hard deadline: a match still running at its deadline
    is ended by killing the process, and a fresh one is started at once for the next request.
    Requests take turns; waiting for the worker counts against the deadline. Thread-safe.

    The child is `python -m mvclam.engine.substructure` (RDKit only, JSON lines on its pipes), not
    a fork of the server, whose threads and native libraries are not fork-safe."""

    def __init__(self, start: bool = True):
        self._turn = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        if start:
            self.start()

    def start(self) -> None:
        """Start the process now (else the first match does), so that match finds it warm."""
        with self._turn:
            if self._process is None:
                self._start()

    def _start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "mvclam.engine.substructure"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait(10)
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()

    def _ask(self, smarts: str, smiles: Sequence[str | None], deadline: float | None) -> str | None:
        """The worker's reply line, or None when the deadline passed first."""
        if self._process is None or self._process.poll() is not None:
            self._stop()
            self._start()
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps({"smarts": smarts, "smiles": list(smiles)}) + "\n")
        process.stdin.flush()
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([process.stdout], [], [], left)
        return process.stdout.readline() if ready else None

    def match(self, smarts: str, smiles: Sequence[str | None], deadline: float | None) -> list[bool]:
        compile_smarts(smarts)  # refused patterns never reach the worker
        started = time.monotonic()
        if not self._turn.acquire(timeout=-1 if deadline is None else max(0.0, deadline - started)):
            raise _timeout(time.monotonic() - started)
        try:
            try:
                reply = self._ask(smarts, smiles, deadline)
            except OSError:  # a broken pipe: the worker died (killed from outside, out of memory)
                reply = ""
            if reply is None:  # RDKit cannot be interrupted: end the process, start a fresh one
                self._stop()
                self._start()
                raise _timeout(time.monotonic() - started)
            if not reply:
                self._stop()
                raise SearchError("SMARTS matching failed: the matching process ended")
        finally:
            self._turn.release()
        status, _, value = reply.rstrip("\n").partition(" ")
        if status != "ok":
            raise SearchError(value)
        return [c == "1" for c in value]

    def close(self) -> None:
        with self._turn:
            self._stop()
