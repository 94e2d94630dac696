#!/usr/bin/env python
"""Fine-tune an evaluator's self-recognition with TRL's SFTTrainer (LoRA, QLoRA or full).

    python recipes/selfrec_sft.py                                   # CPU demo (recipes/demo/selfrec_sft.yaml)
    python recipes/selfrec_sft.py --config recipes/llama2-7b-chat/xsum_lora.yaml [--flag value ...]
    accelerate launch --config_file accelerate_configs/ddp.yaml recipes/selfrec_sft.py --config ...

Every logic lives in ``selfrec_ft.training``; see recipes/README.md.
"""

import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent / "demo" / "selfrec_sft.yaml"


def main(argv=None) -> int:
    from trl import ModelConfig, SFTConfig, TrlParser

    from selfrec_ft.errors import UserError
    from selfrec_ft.training.args import EvalHookArguments, SelfRecDataArguments, parse_args_and_config_strict
    from selfrec_ft.training.sft import run_sft

    parser = TrlParser((SelfRecDataArguments, SFTConfig, ModelConfig, EvalHookArguments))
    try:
        data_args, training_args, model_args, hook_args = parse_args_and_config_strict(parser, argv, DEFAULT_CONFIG)
        result = run_sft(data_args, training_args, model_args, hook_args=hook_args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.is_main_process:
        print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
