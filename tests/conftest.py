"""Shared pytest set-up.

TRITON_INTERPRET must be set before any Triton kernel module is imported, so it is set here
(conftest is imported first) whenever no CUDA device exists: kernels then run on the CPU in
Triton's interpreter and are compared against their torch references.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@contextlib.contextmanager
def running_server(app, log_level: str = "warning") -> Iterator[int]:
    """Serve an ASGI `app` with uvicorn in a thread on a free loopback port; yields the port."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not instance.started and time.time() < deadline:
        time.sleep(0.05)
    assert instance.started, "uvicorn did not start"
    try:
        yield port
    finally:
        instance.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module: on a shared 2-core machine two OpenMP threads spin against
    other processes (10x slower), and vLLM's CPU worker binds a core of its own."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
