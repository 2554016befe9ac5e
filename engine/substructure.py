"""RDKit substructure matching of SMILES against a SMARTS, for `mvclam.engine.search.smarts`.

Kept outside the search package, whose imports (torch, LanceDB) a SMARTS worker process
(`SmartsWorker`) does not need: it starts again in a fraction of a second after being killed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import IO, Any


def has_substructure(pattern: Any, smiles: str | None) -> bool:
    """True when `smiles` parses and contains the compiled SMARTS `pattern`."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles) if smiles else None
    return mol is not None and mol.HasSubstructMatch(pattern)


def match_smiles(pattern: Any, smiles: Sequence[str | None], deadline: float | None) -> list[bool] | None:
    """Which of `smiles` contain `pattern`; None once `deadline` (time.monotonic()) has passed,
    checked between molecules."""
    out = []
    for value in smiles:
        if deadline is not None and time.monotonic() > deadline:
            return None
        out.append(has_substructure(pattern, value))
    return out


def serve_matches(requests: IO[str], replies: IO[str]) -> None:
    """A matching process: for each request line `{"smarts": ..., "smiles": [...]}` one reply
    line, "ok <0/1 per SMILES>" or "error <message>", until `requests` ends. The caller bounds
    the time (it kills the process)."""
    from rdkit import Chem, rdBase

    rdBase.DisableLog("rdApp.*")
    compiled: dict[str, Any] = {}
    for line in requests:
        request = json.loads(line)
        smarts = request["smarts"]
        pattern = compiled.get(smarts) or Chem.MolFromSmarts(smarts)
        if pattern is None:
            replies.write(f"error invalid SMARTS {smarts!r}\n")
        else:
            compiled = {smarts: pattern}  # the last pattern: the searcher sends it in rounds
            found = match_smiles(pattern, request["smiles"], None) or []
            replies.write("ok " + "".join("1" if f else "0" for f in found) + "\n")
        replies.flush()


if __name__ == "__main__":  # the SMARTS worker process of mvclam serve (SmartsWorker)
    import sys

    serve_matches(sys.stdin, sys.stdout)
