"""Give the top-level name ``kernels`` back to the installed distribution that owns it.

This folder is ``mvclam.kernels``. When a checkout's root is on ``sys.path`` it is also importable as
``kernels``, which shadows Hugging Face's ``kernels`` package (a dependency of transformers>=5.25).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys


def hand_over_to_installed(init_file: str) -> None:
    """Replace ``sys.modules["kernels"]`` with the installed ``kernels`` found outside this checkout.

    importlib returns ``sys.modules[name]`` once a package's ``__init__`` has run, so the importer gets
    the installed package. Without one the name stays bound to an empty module, which carries no
    ``__version__``: transformers then reports ``kernels`` as unavailable, as it would without it.
    """
    sys.modules.pop(__name__, None)  # this helper, loaded as `kernels._shadowed_name`, is no part of theirs
    checkout_root = os.path.dirname(os.path.dirname(os.path.abspath(init_file)))
    elsewhere = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != checkout_root]
    spec = importlib.machinery.PathFinder.find_spec("kernels", elsewhere)
    if spec is None or spec.loader is None:
        return
    installed = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = installed
    try:
        spec.loader.exec_module(installed)
    except BaseException:
        del sys.modules["kernels"]
        raise
