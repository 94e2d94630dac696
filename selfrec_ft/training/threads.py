"""CPU threads for training and scoring on a CPU.

``accelerate launch`` exports ``OMP_NUM_THREADS=1`` unless told otherwise (it passes
``--num_cpu_threads_per_process`` only with ``--cpu`` and a detected core count), so a plain
``accelerate launch recipes/selfrec_sft.py`` on a laptop would train on one core. For CPU runs the
recipes therefore give each local process its share of the machine's cores; ``SELFREC_CPU_THREADS``
sets the number explicitly. GPU runs are left alone.
"""

from __future__ import annotations

import logging
import os

from selfrec_ft.errors import UserError

logger = logging.getLogger(__name__)

ENV = "SELFREC_CPU_THREADS"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_threads_per_process(local_processes: int | None = None) -> int:
    """``SELFREC_CPU_THREADS`` if set, else the available cores divided among the local processes."""
    explicit = os.environ.get(ENV)
    if explicit:
        try:
            n = int(explicit)
        except ValueError:
            n = 0
        if n < 1:
            raise UserError(f"{ENV}={explicit!r} is not a positive integer")
        return n
    if local_processes is None:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, available_cores() // max(1, local_processes))


def use_cpu_cores(training_args) -> int | None:
    """Set torch's intra-op threads for a CPU run (``use_cpu`` or no CUDA); return the count, or None."""
    import torch

    if not (getattr(training_args, "use_cpu", False) or not torch.cuda.is_available()):
        return None
    n = cpu_threads_per_process()
    if torch.get_num_threads() != n:
        logger.info("CPU run: %d torch threads per process (was %d; set %s to choose)", n,
                    torch.get_num_threads(), ENV)
        torch.set_num_threads(n)
    return n
