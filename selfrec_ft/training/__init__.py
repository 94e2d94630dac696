"""Fine-tuning the evaluator's self-recognition (SFT) and its attributes (DPO).

* :mod:`selfrec_ft.training.args` — every recipe dataclass and the strict config parser;
* :mod:`selfrec_ft.training.sft` — :func:`~selfrec_ft.training.sft.run_sft`, the TRL SFT runner;
* :mod:`selfrec_ft.training.dpo` — :func:`~selfrec_ft.training.dpo.run_attribute_dpo`;
* :mod:`selfrec_ft.training.lifecycle` / :mod:`.teardown` — what both runners share;
* :mod:`selfrec_ft.training.hook` — the evaluation callback; :mod:`.report` its report;
* :mod:`selfrec_ft.training.manifest` — ``resolved_config.yaml`` and ``training_manifest.json``;
* :mod:`selfrec_ft.training.demo_assets` — the ``demo://`` tiny model and synthetic corpora.

Nothing heavy (torch, TRL) is imported here. Importing the package quiets one known-harmless notice
(:func:`quiet_cpu_bitsandbytes_notice`), so a script should import it before PEFT or TRL.
"""

from __future__ import annotations

import logging
import sys

BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_CPU_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


class _DropCpuKernelNotice(logging.Filter):
    """Drops bitsandbytes' notice that an optional CPU kernel could not be fetched from the Hub,
    when there is no CUDA device (every other record passes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(BNB_CPU_NOTICE):
            return True
        torch = sys.modules.get("torch")  # bitsandbytes has imported it by the time it logs
        return torch is not None and torch.cuda.is_available()


def quiet_cpu_bitsandbytes_notice() -> None:
    """On a CPU with AVX512-BF16 and no CUDA, importing bitsandbytes (PEFT and TRL do, on every
    run) logs that the optional ``kernels-community`` CPU kernel could not be loaded; harmless for
    training. Install a filter for that one record on its logger (idempotent; imports nothing)."""
    log = logging.getLogger(BNB_CPU_LOGGER)
    if not any(isinstance(f, _DropCpuKernelNotice) for f in log.filters):
        log.addFilter(_DropCpuKernelNotice())


quiet_cpu_bitsandbytes_notice()
