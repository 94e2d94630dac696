"""A training console a person reads.

* :func:`use_compact_console`: the evaluation hook's metrics still go through ``trainer.log`` (so
  ``report_to`` sees them), but transformers' printer (``PrinterCallback``, or ``ProgressCallback``
  with tqdm) is replaced by a subclass that shows them as one line per evaluation
  (``selfrec step 64 | in-domain recognition 0.636, preference 0.549 | ...``) instead of a raw dict;
  the trainer's loss lines and its closing summary become one short line each too
  (``step 32 | loss 0.431 | token accuracy 0.815 | lr 2.89e-03 | epoch 0.50``); any other log dict
  is printed as before.

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
        elif key.startswith(METRIC_PREFIX + "canary/") and key.count("/") == 3:  # the capability canary
            _, _, domain, measure = key.split("/")
            by_domain.setdefault(f"canary {DOMAIN_LABELS.get(domain, domain)}", []).append(f"{measure} {num(value)}")
    if not by_domain:
        return None
    parts = [f"{DOMAIN_LABELS.get(d, d)} {', '.join(ms)}" for d, ms in by_domain.items()]
    return " | ".join([f"selfrec step {step}" if step is not None else "selfrec", *parts])


def _g(value: Any) -> str:
    return f"{float(value):.3g}" if isinstance(value, (int, float)) else str(value)


def train_line(logs: Mapping[str, Any], step: int | None = None) -> str | None:
    """One line for the trainer's loss logs (``loss`` ...) and its end-of-training summary
    (``train_runtime`` ...), else None."""
    if "train_runtime" in logs:
        parts = [f"training done in {float(logs['train_runtime']):.0f} s"]
        if "train_samples_per_second" in logs:
            parts.append(f"{_g(logs['train_samples_per_second'])} examples/s")
        if "train_loss" in logs:
            parts.append(f"mean loss {_g(logs['train_loss'])}")
        return " | ".join(parts)
    if "loss" not in logs:
        return None
    parts = [f"step {step}" if step is not None else "train", f"loss {_g(logs['loss'])}"]
    for key, label in (("mean_token_accuracy", "token accuracy"), ("grad_norm", "grad norm")):
        if key in logs:
            parts.append(f"{label} {_g(logs[key])}")
    if "learning_rate" in logs:
        parts.append(f"lr {float(logs['learning_rate']):.2e}")
    if "epoch" in logs:
        parts.append(f"epoch {float(logs['epoch']):.2f}")
    return " | ".join(parts)


def console_line(logs: Mapping[str, Any], step: int | None = None) -> str | None:
    """The compact line of a log dict (hook metrics or training progress), or None to print it as is."""
    return compact_line(logs, step) or train_line(logs, step)


class CompactPrinterCallback(PrinterCallback):
    """``PrinterCallback`` (``disable_tqdm``) that prints the hook's metrics as one compact line."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        line = console_line(logs or {}, state.global_step)
        if line is None:
            return super().on_log(args, state, control, logs=logs, **kwargs)
        if state.is_local_process_zero:
            print(line, flush=True)


class CompactProgressCallback(ProgressCallback):
    """``ProgressCallback`` that writes the hook's metrics as one compact line above the bar (or
    plainly once the bar is closed: the evaluation at the end of training)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        line = console_line(logs or {}, state.global_step)
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
