"""Fixtures of the baseline tests."""

from __future__ import annotations

import pytest
import torch

from gqsa.solver.hessian import HessianAccumulator

from .synthetic import make_layer


@pytest.fixture
def layer() -> tuple[torch.Tensor, HessianAccumulator]:
    return make_layer()


@pytest.fixture(autouse=True)
def one_thread():
    """Run on one intra-op thread: the solvers issue many small ops, and on a shared, busy
    2-core machine every parallel op can wait ~10 ms for its second thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
