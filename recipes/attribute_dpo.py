#!/usr/bin/env python
"""Inject or remove a P2 attribute in an evaluator's own writing with TRL's DPOTrainer and measure
the shift in its summaries, self-recognition and self-preference = `selfrec dpo`.

    python recipes/attribute_dpo.py                                    # CPU demo (recipes/demo/attribute_dpo.yaml)
    python recipes/attribute_dpo.py --direction remove --output_dir /tmp/dpo_remove
    python recipes/attribute_dpo.py --config recipes/llama2-7b-chat/dpo_lengthy_inject.yaml

The entry point is selfrec_ft.scripts.dpo (flags: --help); see recipes/README.md.
"""

import sys

from selfrec_ft.scripts.dpo import main

if __name__ == "__main__":
    sys.exit(main())
