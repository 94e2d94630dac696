"""A training console a person reads.

* :func:`use_compact_console`: the evaluation hook's metrics still go through ``trainer.log`` (so
  ``report_to`` sees them), but transformers' printer (``PrinterCallback``, or ``ProgressCallback``
  with tqdm) is replaced by a subclass that shows them as one line per evaluation
  (``selfrec step 64 | in-domain recognition 0.636, preference 0.549 | ...``) instead of a raw dict;
  every other log line is printed as before.

The CPU-only bitsandbytes notice is quieted where the package is imported
(:func:`selfrec_ft.training.quiet_cpu_bitsandbytes_notice`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import PrinterCallback, ProgressCallback

from selfrec_ft.markdown import num

METRIC_PREFIX = "selfrec/"
DOMAIN_LABELS = {"in_domain": "in-domain", "out_of_domain": "out-of-domain"}


def compact_line(logs: Mapping[str, Any], step: int | None = None) -> str | None:
    """One line for logs holding the hook's ``selfrec/<domain>/<measure>`` metrics, else None."""
    by_domain: dict[str, list[str]] = {}
    for key, value in logs.items():
        if key.startswith(METRIC_PREFIX) and key.count("/") == 2:
            _, domain, measure = key.split("/")
            by_domain.setdefault(domain, []).append(f"{measure} {num(value)}")
    if not by_domain:
        return None
    parts = [f"{DOMAIN_LABELS.get(d, d)} {', '.join(ms)}" for d, ms in by_domain.items()]
    return " | ".join([f"selfrec step {step}" if step is not None else "selfrec", *parts])


class CompactPrinterCallback(PrinterCallback):
    """``PrinterCallback`` (``disable_tqdm``) that prints the hook's metrics as one compact line."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        line = compact_line(logs or {}, state.global_step)
        if line is None:
            return super().on_log(args, state, control, logs=logs, **kwargs)
        if state.is_local_process_zero:
            print(line, flush=True)


class CompactProgressCallback(ProgressCallback):
    """``ProgressCallback`` that writes the hook's metrics as one compact line above the bar (or
    plainly once the bar is closed: the evaluation at the end of training)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        line = compact_line(logs or {}, state.global_step)
        if line is None:
            return super().on_log(args, state, control, logs=logs, **kwargs)
        if state.is_world_process_zero:
            if self.training_bar is not None:
                self.training_bar.write(line)
            else:
                print(line, flush=True)


def use_compact_console(trainer) -> None:
    """Swap the trainer's printer callback for its compact subclass (``remove_callback`` /
    ``add_callback``); call before adding the evaluation hook, so the printer sees its logs."""
    for plain, compact in ((PrinterCallback, CompactPrinterCallback), (ProgressCallback, CompactProgressCallback)):
        current = [cb for cb in trainer.callback_handler.callbacks if type(cb) is plain]
        for cb in current:
            trainer.remove_callback(cb)
            trainer.add_callback(compact)
