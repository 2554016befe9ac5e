"""Shared pytest set-up.

TRITON_INTERPRET must be set before any Triton kernel module is imported, so it is set here
(conftest is imported first) whenever no CUDA device exists: kernels then run on the CPU in
Triton's interpreter and are compared against their torch references.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
