#!/usr/bin/env python
"""Sweep recognition strength: train a grid of self-recognition fine-tunes, evaluate, analyse = `selfrec sweep`.

    python recipes/sweep_recognition.py                                   # CPU demo (recipes/demo/sweep.yaml)
    python recipes/sweep_recognition.py --config recipes/llama2-7b-chat/sweep.yaml [--output_dir DIR]
    python recipes/sweep_recognition.py --config C --prepare_only         # run configs (+ SLURM script) only
    python recipes/sweep_recognition.py --config C --skip_training        # evaluate + analyse finished runs

The entry point is selfrec_ft.scripts.sweep (flags: --help); see recipes/README.md.
"""

import sys

from selfrec_ft.scripts.sweep import main

if __name__ == "__main__":
    sys.exit(main())
