#!/usr/bin/env python
"""Fine-tune an evaluator's self-recognition with TRL's SFTTrainer (LoRA, QLoRA or full) = `selfrec train`.

    python recipes/selfrec_sft.py                                   # CPU demo (recipes/demo/selfrec_sft.yaml)
    python recipes/selfrec_sft.py --config recipes/llama2-7b-chat/xsum_lora.yaml [--flag value ...]
    accelerate launch --config_file accelerate_configs/ddp.yaml recipes/selfrec_sft.py --config ...

The entry point is selfrec_ft.scripts.sft (flags: --help); see recipes/README.md.
"""

import sys

from selfrec_ft.scripts.sft import main

if __name__ == "__main__":
    sys.exit(main())
