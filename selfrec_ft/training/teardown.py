"""The end of a training run or a multi-process job: free memory, then the process group.

The one copy of the distributed teardown, used by the SFT and DPO runners, sweeps (several runs in
one process) and multi-process scoring commands. The order matters: a gloo/NCCL group destroyed
under live DDP buckets can hang the exit, so callers drop their own references to the trainer and
model first, then call :func:`release` (or :func:`release_training_state` between in-process
runs, and :func:`end_distributed` once at the very end).
"""

from __future__ import annotations

import gc


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def end_distributed() -> None:
    """Wait for every process and destroy the process group, if one is up (call once, at the end of
    a multi-process script: a gloo group left to the interpreter's exit can abort a process).
    Nothing when torch was never imported (a config error before anything started)."""
    import sys

    if "torch" not in sys.modules:
        return
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def release_training_state() -> None:
    """After an in-process run: drop accelerate's accelerator and gradient state (the next run's
    trainer builds its own) but keep ``PartialState`` (the device and any process group the caller
    runs in), and free memory."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    gc.collect()
    _empty_cuda_cache()


def release(accelerator, teardown: bool) -> None:
    """Free the accelerator's references to model/optimizer, collect, and with ``teardown`` end
    training (destroying the process group; without an accelerator, through ``PartialState``)."""
    from accelerate import PartialState

    if accelerator is not None:
        accelerator.free_memory()  # drops the accelerator's own references to model/optimizer
    gc.collect()
    _empty_cuda_cache()
    if teardown:
        if accelerator is not None:
            accelerator.end_training()
        else:
            PartialState().destroy_process_group()
