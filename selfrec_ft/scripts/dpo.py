"""``selfrec dpo`` = ``recipes/attribute_dpo.py``: inject or remove a P2 attribute in an evaluator's
own writing with TRL's ``DPOTrainer`` (LoRA, no reference model copy), and measure the shift: the
attribute in its summaries and its self-recognition / self-preference, in-domain and out-of-domain,
before and after.

    selfrec dpo                                              # the CPU demo (recipes/demo/attribute_dpo.yaml)
    selfrec dpo --direction remove --output_dir /tmp/dpo_remove
    accelerate launch -m selfrec_ft dpo --config recipes/llama2-7b-chat/dpo_lengthy_inject.yaml

Every logic lives in :func:`selfrec_ft.training.dpo.run_attribute_dpo`; see recipes/README.md.
"""

from __future__ import annotations

import logging
import sys

from selfrec_ft.cmdline import run_main

NAME = "dpo"
HELP = "inject or remove a P2 attribute with TRL's DPOTrainer and measure the shift (= recipes/attribute_dpo.py)"
DESCRIPTION = ("Inject or remove a P2 attribute in an evaluator's own writing with TRL's DPOTrainer (LoRA, no "
               "reference copy), then measure the attribute and self-recognition / self-preference before and "
               "after. Every field below is a YAML key of --config and a flag; flags override the config. "
               "Without --config the CPU demo config recipes/demo/attribute_dpo.yaml is used.")
DEMO_CONFIG = "attribute_dpo.yaml"


def make_parser(subparsers=None, prog: str | None = None):
    """The recipe's ``TrlParser`` over ``AttributeDPOArguments``, ``DPOConfig``, ``ModelConfig`` and
    ``EvalHookArguments``; with ``subparsers`` (``parser_class=TrlParser``) added as ``dpo``."""
    # selfrec_ft.training first: it quiets bitsandbytes' CPU notice before TRL/PEFT import bitsandbytes
    from selfrec_ft.training.args import AttributeDPOArguments, EvalHookArguments  # isort: skip
    from trl import DPOConfig, ModelConfig, TrlParser  # isort: skip

    dataclass_types = (AttributeDPOArguments, DPOConfig, ModelConfig, EvalHookArguments)
    if subparsers is not None:
        return subparsers.add_parser(NAME, help=HELP, description=DESCRIPTION, dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog, description=DESCRIPTION)


class CurrentStderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is when a record is emitted, not the
    stream it was created with: ``selfrec dpo`` run in-process again (tests, notebooks) after the
    first run's stderr was replaced and closed otherwise ends in "--- Logging error --- I/O
    operation on closed file" on the next log line."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the current stderr is used instead
        pass


def train(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse ``argv`` strictly, run attribute DPO with its before/after measurements, print the
    summary; a bad argument raises :class:`~selfrec_ft.errors.UserError`."""
    from selfrec_ft.scripts.configs import default_config
    from selfrec_ft.training.args import parse_args_and_config_strict
    from selfrec_ft.training.dpo import run_attribute_dpo

    argv = list(sys.argv[1:] if argv is None else argv)
    log = logging.getLogger("selfrec_ft")
    log.setLevel(logging.INFO)
    if not log.handlers:
        log.addHandler(CurrentStderrHandler())
    parser = make_parser(prog=prog)
    dpo_args, training_args, model_args, hook_args = parse_args_and_config_strict(
        parser, argv, default_config(argv, DEMO_CONFIG))
    result = run_attribute_dpo(dpo_args, training_args, model_args, hook_args=hook_args)
    if result.is_main_process:
        print(result.summary())
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Entry point of ``selfrec dpo`` and ``recipes/attribute_dpo.py``: the exit status (2 and one
    ``error:`` line for a bad config or flag)."""
    return run_main(train, argv, prog)


if __name__ == "__main__":
    sys.exit(main())
