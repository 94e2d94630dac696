"""Fine-tuning the evaluator's self-recognition.

* :mod:`selfrec_ft.training.args` — the argument dataclasses and the strict config parser;
* :mod:`selfrec_ft.training.sft` — :func:`~selfrec_ft.training.sft.run_sft`, the TRL SFT runner;
* :mod:`selfrec_ft.training.manifest` — ``resolved_config.yaml`` and ``training_manifest.json``;
* :mod:`selfrec_ft.training.demo_assets` — the ``demo://`` tiny model and synthetic corpora.

Nothing heavy (torch, TRL) is imported here.
"""
