"""The checkout's root on sys.path must not take top-level names from installed packages.

The source folders are the ``mvclam.*`` packages, but a checkout's root is on ``sys.path`` under
``python -m pytest``, ``python -c`` and in Ray workers (they get the driver's working directory).
transformers>=5.25 requires Hugging Face's ``kernels`` and imports it at start-up: the folder
``kernels/`` shadowed it and every transformers import failed (CI, session 16).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import json, sys
import kernels
import mvclam.kernels
print(json.dumps({
    "file": getattr(kernels, "__file__", None),
    "version": getattr(kernels, "__version__", None),
    "ours_still_works": callable(mvclam.kernels.maxsim),
    "ours_under_their_name": hasattr(kernels, "maxsim"),
    "leftovers": sorted(name for name in sys.modules if name.startswith("kernels.") and "_shadowed" in name),
}))
"""


def _probe_from_checkout_root(extra_path: Path | None) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    # `python -c` puts the working directory (the checkout root) first on sys.path.
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_installed_kernels_package_wins_over_the_checkout_folder(tmp_path):
    installed = tmp_path / "site" / "kernels"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text('__version__ = "0.19.1"\nfrom .layer import Mode\n')
    (installed / "layer.py").write_text("Mode = 'installed'\n")
    seen = _probe_from_checkout_root(tmp_path / "site")
    assert seen["file"] == str(installed / "__init__.py")
    assert seen["version"] == "0.19.1"
    assert seen["ours_still_works"] and seen["leftovers"] == []


def test_without_an_installed_kernels_the_name_reads_as_absent_to_transformers():
    # An installed `kernels` (in site-packages) would be found; look only where none can be.
    env_has_one = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util; print(importlib.util.find_spec('kernels') is not None)",
        ],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    seen = _probe_from_checkout_root(None)
    if env_has_one == "True":
        assert not seen["file"].startswith(str(ROOT / "kernels"))
    else:
        # transformers reads a module without __version__ as "not installed"; before the fix the
        # name held this folder's whole API.
        assert seen["version"] is None and seen["ours_still_works"]
        assert not seen["ours_under_their_name"]


def test_transformers_imports_from_the_checkout_root():
    done = subprocess.run(
        [sys.executable, "-c", "from transformers import LlamaConfig, LlamaForCausalLM; print('ok')"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
