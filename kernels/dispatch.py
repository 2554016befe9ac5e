"""Single place that decides whether a kernel call runs the fused Triton kernel or its torch reference.

``MVCLAM_KERNELS`` (read at every call, so tests may change it with ``monkeypatch``):

* ``auto`` (default): Triton only when ``triton`` imports, every tensor argument is on CUDA and
  autograd is not needed (the Triton kernels are forward-only).
* ``torch``: always the torch reference.
* ``triton``: always Triton; raises :class:`KernelUnavailableError` when that cannot work
  (no ``triton``, CPU tensors without ``TRITON_INTERPRET=1``, or inputs that need gradients).
  The interpreter tests run in this mode on the CPU.

Nothing here imports Triton at module import time.
"""

from __future__ import annotations

import functools
import os

import torch

ENV_VAR = "MVCLAM_KERNELS"
MODES = ("auto", "torch", "triton")


class KernelUnavailableError(RuntimeError):
    """``MVCLAM_KERNELS=triton`` was requested but the Triton path cannot run these inputs."""


@functools.cache
def triton_available() -> bool:
    """True when ``import triton`` succeeds (cached; the import is done once, lazily)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def interpreter_enabled() -> bool:
    """True when Triton's CPU interpreter was requested (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def kernel_mode() -> str:
    """The current ``MVCLAM_KERNELS`` mode, validated."""
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV_VAR}={mode!r} is not one of {MODES}")
    return mode


def _on_cuda(t: torch.Tensor) -> bool:
    return t.is_cuda


def _needs_grad(tensors: tuple[torch.Tensor, ...]) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """Decide whether a kernel call with these tensor arguments should use Triton.

    ``None`` arguments (optional masks/biases) are ignored. See the module docstring for the rules.
    """
    ts = tuple(t for t in tensors if isinstance(t, torch.Tensor))
    mode = kernel_mode()
    if mode == "torch":
        return False
    if mode == "auto":
        # Cheap checks first: CPU calls never import Triton.
        return (
            len(ts) > 0
            and all(_on_cuda(t) for t in ts)
            and not _needs_grad(ts)
            and not interpreter_enabled()
            and triton_available()
        )
    # mode == "triton": forced; refuse loudly instead of silently doing something else.
    if not triton_available():
        raise KernelUnavailableError(f"{ENV_VAR}=triton but the 'triton' package cannot be imported")
    if _needs_grad(ts):
        raise KernelUnavailableError(
            f"{ENV_VAR}=triton but an input requires grad: the Triton kernels are forward-only "
            "(use MVCLAM_KERNELS=auto, or run under torch.no_grad())"
        )
    if not all(_on_cuda(t) for t in ts) and not interpreter_enabled():
        raise KernelUnavailableError(
            f"{ENV_VAR}=triton with CPU tensors needs TRITON_INTERPRET=1 set before the kernel "
            "modules are imported"
        )
    return True
