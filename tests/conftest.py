"""Shared test set-up: every test leaves torch's CPU thread count as it found it (runs, benches
and evaluations set it from their configs, and a leak would slow or change later tests)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_torch_thread(_restore_torch_threads):
    """Tiny nets: one thread is faster, and much faster on a busy machine (restored afterwards)."""
    torch.set_num_threads(1)
