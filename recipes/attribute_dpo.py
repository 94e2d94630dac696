#!/usr/bin/env python
"""Inject or remove a P2 attribute in an evaluator's own writing with TRL's DPOTrainer (LoRA, no
reference model copy), and measure the shift: the attribute in its summaries and its
self-recognition / self-preference, in-domain and out-of-domain, before and after.

    accelerate launch recipes/attribute_dpo.py                         # CPU demo (recipes/demo/attribute_dpo.yaml)
    accelerate launch recipes/attribute_dpo.py --direction remove --output_dir /tmp/dpo_remove
    accelerate launch recipes/attribute_dpo.py --config recipes/llama2-7b-chat/dpo_lengthy_inject.yaml

Every logic lives in ``selfrec_ft.training.dpo``; see recipes/README.md.
"""

import logging
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent / "demo" / "attribute_dpo.yaml"


def main(argv=None) -> int:
    from trl import DPOConfig, ModelConfig, TrlParser

    from selfrec_ft.errors import UserError
    from selfrec_ft.training.args import EvalHookArguments, parse_args_and_config_strict
    from selfrec_ft.training.dpo import AttributeDPOArguments, run_attribute_dpo

    log = logging.getLogger("selfrec_ft")
    log.setLevel(logging.INFO)
    if not log.handlers:
        log.addHandler(logging.StreamHandler())
    parser = TrlParser((AttributeDPOArguments, DPOConfig, ModelConfig, EvalHookArguments))
    try:
        dpo_args, training_args, model_args, hook_args = parse_args_and_config_strict(parser, argv, DEFAULT_CONFIG)
        result = run_attribute_dpo(dpo_args, training_args, model_args, hook_args=hook_args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.is_main_process:
        print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
