"""CPU runs get their share of the cores even though `accelerate launch` exports OMP_NUM_THREADS=1."""

import os
from types import SimpleNamespace

import pytest
import torch

from selfrec_ft.errors import UserError
from selfrec_ft.training.threads import ENV, cpu_threads_per_process, use_cpu_cores


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_cores_are_shared_among_local_processes(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what accelerate launch exports; not a user choice
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert cpu_threads_per_process() == _cores()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * _cores()))
    assert cpu_threads_per_process() == 1  # never zero
    assert cpu_threads_per_process(local_processes=1) == _cores()


def test_explicit_thread_count_wins_and_bad_values_are_user_errors(monkeypatch):
    monkeypatch.setenv(ENV, "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cpu_threads_per_process() == 3
    for bad in ("0", "-2", "two"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(UserError, match=ENV):
            cpu_threads_per_process()


def test_cpu_run_sets_torch_threads(monkeypatch, restore_threads):
    monkeypatch.setenv(ENV, "1")
    torch.set_num_threads(2)
    assert use_cpu_cores(SimpleNamespace(use_cpu=True)) == 1
    assert torch.get_num_threads() == 1
    monkeypatch.setenv(ENV, "2")
    assert use_cpu_cores(SimpleNamespace(use_cpu=True)) == 2
    assert torch.get_num_threads() == 2
