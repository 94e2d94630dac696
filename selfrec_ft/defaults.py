"""Constants that commands need when they register, with no dependency beyond the standard library.

Like lm-evaluation-harness's ``lm_eval/defaults.py``: the ``selfrec`` front door reads its choices
and defaults from here, so building its parser imports neither torch nor transformers, scipy,
scikit-learn, matplotlib or datasets. The modules that implement a name re-export it from here;
never define one of these values a second time.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------- tasks
PAIRWISE_TASKS = ("pairwise-recognition", "pairwise-preference")
INDIVIDUAL_TASKS = ("individual-recognition", "individual-score")
CONTROL_TASKS = ("pairwise-length", "pairwise-vowelcount", "pairwise-readability")
TASKS = PAIRWISE_TASKS + INDIVIDUAL_TASKS
"""Tasks an evaluation scores (control questions are training-time questions only)."""
FAMILIARITY = "familiarity"
"""Mean token log-likelihood of each source's summary given the domain's generation prompt."""
DEFAULT_TASKS = TASKS
DEFAULT_HOOK_TASKS = PAIRWISE_TASKS
"""Tasks of the training hook, eval-checkpoints and sweeps: recognition and preference."""
MEASURES = {"pairwise-recognition": "recognition", "pairwise-preference": "preference"}
WORSE_QUESTION_TASK = "pairwise-preference-worse"
"""Rows of the preference pairs asked "which summary is worse?" (the preset's inverted template of that
name), scored beside the "better" question for the question-following control (issue 23)."""
PERTURBATIONS = ("word-shuffle", "sentence-shuffle", "truncate-to-equal-length", "lowercase-strip-punct")
"""``selfrec eval --perturb``: what is done to the summaries of a perturbed condition (scoring/perturb.py)."""

# ------------------------------------------------------------------------------ prompts and data
DEFAULT_PRESET = "panickssery2024"
GENERATION_DOMAINS = ("short", "highlights")
"""Summary styles: ``short`` (XSUM-like, one sentence) and ``highlights`` (CNN/DailyMail-like)."""
GENERATION_TEMPLATES = {"short": "generate-short", "highlights": "generate-highlights"}
LABEL_STRATEGIES = ("self", "other", "always_1", "random", "length", "vowelcount", "readability")
CONTROL_QUESTIONS = {"length": "pairwise-length", "vowelcount": "pairwise-vowelcount",
                     "readability": "pairwise-readability"}
LABEL_TIES = ("drop", "position1")
"""What a control strategy does with a pair tied on its property: leave it out (default) or label
position 1 (which trains a position bias)."""
DEFAULT_LABEL_TIES = "drop"
ARTICLES_FILE = "articles.jsonl"
SUMMARIES_FILE = "summaries.jsonl"

# -------------------------------------------------------------------------------------- scoring
DEFAULT_BATCH_SIZE = 16
DTYPE_CHOICES = ("float32", "bfloat16")
"""Dtypes a user picks on the command line (``models.loading.DTYPES`` also knows aliases)."""
DOMAIN_KEYS = ("in_domain", "out_of_domain")
REPORT_FORMATS = ("selfrec", "p1")
EXAMPLES_FILE = "examples.jsonl"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"

# ----------------------------------------------------------------------------------- dissection
DISSECTION_METHODS = ("nuts", "nuts-p2", "map")
"""Fit methods: posterior mean by NUTS (default), P2's exact NUTS procedure, posterior mode."""
DEFAULT_DISSECTION_METHOD = "nuts"
DEFAULT_PRIOR_SCALE = 0.1
"""P2's Laplace(0, b) prior scale on every weight."""

# ---------------------------------------------------------------------------- models and training
TINY_SIZES = ("tiny", "demo", "small")
GENERATION_BACKENDS = ("hf", "vllm")
DPO_DIRECTIONS = ("inject", "remove")
MANIFEST_FILE = "training_manifest.json"
HOOK_FILE = "selfrec_hook.jsonl"

# ------------------------------------------------------------------------------------- steering
STEER_KINDS = ("authorship", "readout", "length", "random")
"""Directions ``selfrec steer fit`` writes: the two of issue 17 and two controls (an unrelated
attribute, summary length; a seeded random direction with authorship's norm)."""
STEER_MODES = ("add", "scale")
"""``add``: α·norm·u at one summary's tokens; ``scale``: the component along u times λ."""
STEER_TARGETS = ("self", "other")
STEER_NULL_VALUE = {"add": 0.0, "scale": 1.0}
"""The value of each mode that leaves the model unchanged (the sweep's baseline point)."""
