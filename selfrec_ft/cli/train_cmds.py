"""``selfrec train``, ``selfrec dpo`` and ``selfrec sweep``: the recipes behind the front door.

``train`` and ``dpo`` take every flag of their recipe's ``TrlParser`` (hundreds of ``SFTConfig`` /
``DPOConfig`` fields): building that parser imports TRL and torch, so here they are registered as
light commands that hand the rest of the command line, ``--help`` included, to
:func:`selfrec_ft.scripts.sft.main` / :func:`selfrec_ft.scripts.dpo.main`, which build the real
parser (TRL's own CLI does the same). ``sweep``'s parser is plain argparse and is registered whole.
"""

from __future__ import annotations

import argparse

from selfrec_ft.scripts import dpo, sft, sweep


def _hand_off(sub, script) -> None:
    # prefix_chars="\0": no argument looks like an option here, so every one (``--help`` too)
    # lands in ``argv`` and reaches the recipe's own parser unchanged.
    p = sub.add_parser(script.NAME, help=script.HELP, add_help=False, prefix_chars="\0",
                       description=f"{script.HELP}; see `selfrec {script.NAME} --help`")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda args: script.main(args.argv, prog=f"selfrec {script.NAME}"))


def register(sub) -> None:
    _hand_off(sub, sft)
    _hand_off(sub, dpo)
    sweep.make_parser(sub)
