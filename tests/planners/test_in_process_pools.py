"""planners.api.in_process_pools: nnU-Net's planning pools as threads of this process for num_processes=1."""
from __future__ import annotations

import importlib
import multiprocessing
import multiprocessing.pool
import operator

import pytest

from nnunet_liver.planners.api import _SPAWNING_MODULES, in_process_pools


def _pool_class(module):
    with module.multiprocessing.get_context("spawn").Pool(1) as p:
        assert p.starmap(operator.add, [(1, 2), (3, 4)]) == [3, 7]
        result = p.starmap_async(operator.mul, ((2, 5),))
        assert result.get(timeout=10) == [10]
        assert all(w.is_alive() for w in p._pool)  # nnU-Net's loops poll the workers like this
        return type(p)


def test_thread_pools_inside_and_spawned_processes_after():
    modules = [importlib.import_module(m) for m in _SPAWNING_MODULES]
    with in_process_pools():
        for m in modules:
            assert _pool_class(m) is multiprocessing.pool.ThreadPool
            assert m.multiprocessing.cpu_count() == multiprocessing.cpu_count()  # the rest is the module's
    assert all(m.multiprocessing is multiprocessing for m in modules)
    with in_process_pools(enabled=False):
        assert all(m.multiprocessing is multiprocessing for m in modules)


def test_restored_after_an_error():
    modules = [importlib.import_module(m) for m in _SPAWNING_MODULES]
    with pytest.raises(RuntimeError), in_process_pools():
        raise RuntimeError("boom")
    assert all(m.multiprocessing is multiprocessing for m in modules)
