"""``selfrec train`` = ``recipes/selfrec_sft.py``: fine-tune an evaluator's self-recognition with
TRL's ``SFTTrainer`` (LoRA, QLoRA or full) and measure recognition and preference while it trains.

    selfrec train                                            # the CPU demo (recipes/demo/selfrec_sft.yaml)
    selfrec train --config recipes/llama2-7b-chat/xsum_lora.yaml [--flag value ...]
    accelerate launch -m selfrec_ft train --config ...       # = accelerate launch recipes/selfrec_sft.py ...

Every logic lives in :func:`selfrec_ft.training.sft.run_sft`; see recipes/README.md.
"""

from __future__ import annotations

import sys

from selfrec_ft.cmdline import run_main

NAME = "train"
HELP = "fine-tune an evaluator's self-recognition with TRL's SFTTrainer (= recipes/selfrec_sft.py)"
DESCRIPTION = ("Fine-tune an evaluator's self-recognition with TRL's SFTTrainer (LoRA, QLoRA or full) and "
               "measure recognition and preference in-domain and out-of-domain while it trains. Every field "
               "below is a YAML key of --config and a flag; flags override the config. Without --config the "
               "CPU demo config recipes/demo/selfrec_sft.yaml is used.")
DEMO_CONFIG = "selfrec_sft.yaml"


def make_parser(subparsers=None, prog: str | None = None):
    """The recipe's ``TrlParser`` over its four argument groups (``SelfRecDataArguments``,
    ``SFTConfig``, ``ModelConfig``, ``EvalHookArguments``); with ``subparsers`` (made with
    ``parser_class=TrlParser``, as TRL's CLI does) it is added there as the ``train`` command."""
    # selfrec_ft.training first: it quiets bitsandbytes' CPU notice before TRL/PEFT import bitsandbytes
    from selfrec_ft.training.args import EvalHookArguments, SelfRecDataArguments  # isort: skip
    from trl import ModelConfig, SFTConfig, TrlParser  # isort: skip

    dataclass_types = (SelfRecDataArguments, SFTConfig, ModelConfig, EvalHookArguments)
    if subparsers is not None:
        return subparsers.add_parser(NAME, help=HELP, description=DESCRIPTION, dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog, description=DESCRIPTION)


def train(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse ``argv`` (``--config`` YAML + flags) strictly, train, print the result table; a bad
    argument raises :class:`~selfrec_ft.errors.UserError`."""
    from selfrec_ft.scripts.configs import default_config
    from selfrec_ft.training.args import parse_args_and_config_strict
    from selfrec_ft.training.sft import run_sft

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser(prog=prog)
    data_args, training_args, model_args, hook_args = parse_args_and_config_strict(
        parser, argv, default_config(argv, DEMO_CONFIG))
    result = run_sft(data_args, training_args, model_args, hook_args=hook_args)
    if result.is_main_process:
        print(result.summary())
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Entry point of ``selfrec train`` and ``recipes/selfrec_sft.py``: the exit status (2 and one
    ``error:`` line for a bad config or flag)."""
    return run_main(train, argv, prog)


if __name__ == "__main__":
    sys.exit(main())
