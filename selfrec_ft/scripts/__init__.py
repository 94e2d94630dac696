"""The recipes' entry points: ``selfrec train`` / ``recipes/selfrec_sft.py`` (:mod:`.sft`),
``selfrec dpo`` / ``recipes/attribute_dpo.py`` (:mod:`.dpo`) and ``selfrec sweep`` /
``recipes/sweep_recognition.py`` (:mod:`.sweep`).

Like TRL's ``trl/scripts``: each module has ``make_parser(subparsers=None, prog=None)`` and
``main(argv=None) -> int`` and imports torch, transformers and TRL only inside them, so the
``selfrec`` front door registers the commands without loading any of them.
"""
