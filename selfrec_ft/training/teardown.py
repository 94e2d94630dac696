"""End of a training run: free the trainer's memory, then (optionally) the process group.

The order matters: a gloo/NCCL group destroyed under live DDP buckets can hang the exit, so the
callers drop their own references to the trainer and model first, then call :func:`release`.
"""

from __future__ import annotations

import gc


def release(accelerator, teardown: bool) -> None:
    """Free the accelerator's references to model/optimizer, collect, and with ``teardown`` end
    training (destroying the process group; without an accelerator, through ``PartialState``)."""
    from accelerate import PartialState

    if accelerator is not None:
        accelerator.free_memory()  # drops the accelerator's own references to model/optimizer
    gc.collect()
    if teardown:
        if accelerator is not None:
            accelerator.end_training()
        else:
            PartialState().destroy_process_group()
