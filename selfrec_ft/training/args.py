"""Arguments of the SFT recipe and a strict front end for ``trl.TrlParser``.

The SFT recipe parses four dataclasses with one ``TrlParser``: :class:`SelfRecDataArguments` (what to
train on), ``trl.SFTConfig`` (how), ``trl.ModelConfig`` (which model; LoRA / QLoRA) and
:class:`EvalHookArguments` (evaluation while training). Field names must not collide across the four
(argparse would refuse them), hence ``prompt_max_length`` here next to ``SFTConfig.max_length``.

:func:`parse_args_and_config_strict` wraps ``TrlParser.parse_args_and_config`` so that an unknown
YAML key or command-line flag, a malformed YAML file or a value a dataclass rejects raises
:class:`~selfrec_ft.errors.UserError` (one line, naming the file and line) instead of a traceback,
and so that a missing ``--config`` falls back to a default config file.

:class:`AttributeDPOArguments` are the attribute-DPO recipe's own arguments (beside ``DPOConfig``,
``ModelConfig`` and :class:`EvalHookArguments`): every recipe dataclass lives in this module.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from selfrec_ft.defaults import (
    DEFAULT_HOOK_TASKS,
    DEFAULT_LABEL_TIES,
    DEFAULT_PRESET,
    DPO_DIRECTIONS,
    GENERATION_DOMAINS,
    LABEL_TIES,
    PERTURBATIONS,
)
from selfrec_ft.defaults import LABEL_STRATEGIES as STRATEGIES
from selfrec_ft.errors import UserError


def split_list(value) -> list[str] | None:
    """``"a,b"``, ``["a", "b"]`` or ``["a,b"]`` -> ``["a", "b"]``; ``None``/empty -> ``None``."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    out = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    return out or None


@dataclass
class SelfRecDataArguments:
    """What the evaluator is trained on: the pairwise "which summary is yours?" examples."""

    corpus: str | None = field(
        default=None,
        metadata={"help": "Corpus directory (articles.jsonl + summaries.jsonl), or `demo://short` / "
                  "`demo://highlights` for a synthetic corpus the library writes into `demo_cache`. "
                  "Leave empty when loading from the hub with `hf_dataset`."},
    )
    self_source: str | None = field(
        default=None,
        metadata={"help": "The evaluator's own summaries: a source name in summaries.jsonl (e.g. llama2-7b-chat)."},
    )
    others: list[str] | None = field(
        default=None,
        metadata={"help": "Other sources to pair with the self source (a list, or one comma-separated "
                  "string). Default: every other source in the corpus."},
    )
    n_articles: int = field(
        default=500,
        metadata={"help": "Train on the first N articles in file order (P1: 2, 10, 500). Evaluation must "
                  "use only the articles after them."},
    )
    labels: str = field(
        default="self",
        metadata={"help": "Label strategy: self (correct), other (wrong), always_1, random, length, "
                  "vowelcount, readability.", "choices": list(STRATEGIES)},
    )
    flip_fraction: float | None = field(
        default=None,
        metadata={"help": "Give this fraction of the examples the `other` label (labels must be `self`): "
                  "a dial of recognition strength."},
    )
    label_seed: int = field(
        default=0, metadata={"help": "Seed of the `random` labels and of `flip_fraction`'s choice of rows."}
    )
    prompt_preset: str = field(
        default=DEFAULT_PRESET,
        metadata={"help": "Prompt preset name (panickssery2024, panickssery2024-exact) or a preset YAML path."},
    )
    question: str = field(
        default="recognition",
        metadata={"help": "recognition: always ask 'which did you write?'; own: a control strategy "
                  "(length/vowelcount/readability) asks its own question.", "choices": ["recognition", "own"]},
    )
    prompt_max_length: int | None = field(
        default=None,
        metadata={"help": "Shorten articles (never summaries) so prompt + answer fit this many tokens. "
                  "Default: SFTConfig.max_length (so no example is truncated)."},
    )
    hf_dataset: str | None = field(
        default=None,
        metadata={"help": "Load articles + reference summaries (source `human`) from this hub dataset "
                  "(e.g. EdinburghNLP/xsum, abisee/cnn_dailymail) instead of `corpus`; needs internet."},
    )
    hf_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration (CNN/DailyMail: 3.0.0)."})
    hf_split: str = field(
        default="train", metadata={"help": "Hub dataset split; slicing such as `train[:1000]` keeps the load small."}
    )
    document_column: str = field(default="document", metadata={"help": "Article column (CNN/DailyMail: article)."})
    summary_column: str = field(default="summary", metadata={"help": "Reference column (CNN/DailyMail: highlights)."})
    id_column: str = field(default="id", metadata={"help": "Id column of the hub dataset."})
    self_summaries: str | None = field(
        default=None,
        metadata={"help": "A summaries.jsonl ({id, source, summary}) added to the corpus: the evaluator's own "
                  "summaries (and any others) for a hub dataset or a corpus that lacks them."},
    )
    share_prefix: bool = field(
        default=False,
        metadata={"help": "Train each article's pairs (both orders, every other source) as one row: the prompt "
                  "they share up to the first summary is computed once, a 4-D mask keeps the branches apart "
                  "(same loss and gradients, far fewer tokens). per_device_train_batch_size then counts "
                  "articles. Needs sdpa or eager attention."},
    )
    demo_cache: str | None = field(
        default=None,
        metadata={"help": "Where `demo://` models and corpora are built (default: $SELFREC_DEMO_CACHE or "
                  "~/.cache/selfrec_ft/demo)."},
    )
    label_ties: str = field(
        default=DEFAULT_LABEL_TIES,
        metadata={"help": "Pairs tied on a control strategy's property (length, vowelcount, readability): "
                  "drop (default: left out and counted) or position1 (labelled 1, which trains a position bias).",
                  "choices": list(LABEL_TIES)},
    )

    def __post_init__(self) -> None:
        self.others = split_list(self.others)


@dataclass
class EvalHookArguments:
    """Evaluation while training (the callback reads these; fields only here)."""

    hook_in_domain: str | None = field(
        default=None,
        metadata={"help": "Corpus directory measured in-domain (the training dataset); its first "
                  "`n_articles` articles are never evaluated. `demo://...` allowed."},
    )
    hook_out_of_domain: str | None = field(
        default=None, metadata={"help": "Corpus directory measured out-of-domain. `demo://...` allowed."}
    )
    hook_limit: int | None = field(
        default=100, metadata={"help": "Held-out articles scored per domain at each evaluation (None: all)."}
    )
    hook_tasks: list[str] = field(
        default_factory=lambda: list(DEFAULT_HOOK_TASKS),
        metadata={"help": "Tasks measured by the hook (a list or a comma-separated string)."},
    )
    hook_batch_size: int = field(default=8, metadata={"help": "Scoring batch size of the hook."})
    hook_worse_question: bool = field(
        default=True,
        metadata={"help": 'Also ask the preference pairs "which summary is worse?" and log the question-following '
                  "gap (self picked under better minus under worse)."},
    )
    hook_others: list[str] | None = field(
        default=None,
        metadata={"help": "Other sources the hook pairs with the self source (default: the training `others`)."},
    )
    hook_in_domain_kind: str | None = field(
        default=None, metadata={"help": "Generation template of the in-domain corpus for the canary (short / "
                                "highlights; default: guessed from its directory name)."})
    hook_out_of_domain_kind: str | None = field(
        default=None, metadata={"help": "As hook_in_domain_kind, for the out-of-domain corpus."})
    hook_canary: bool = field(
        default=True, metadata={"help": "Capability canary at every evaluation: LM loss on the reference "
                                "summaries and ROUGE of the model's greedy summaries (selfrec_ft.training.canary)."})
    hook_canary_articles: int = field(
        default=16, metadata={"help": "Held-out articles whose reference summary the canary's LM loss scores."})
    hook_canary_generate: int = field(
        default=4, metadata={"help": "Of those, how many the model summarises greedily for ROUGE (0: none)."})
    hook_canary_reference: str = field(
        default="human", metadata={"help": "The corpus source of the reference summaries."})
    hook_canary_max_new_tokens: int = field(
        default=100, metadata={"help": "Generation budget of the canary's greedy summaries."})
    hook_style_ceiling: bool = field(
        default=True, metadata={"help": "Before training, the style-classifier ceiling of the in-domain corpus "
                                "(selfrec_ft.analysis.style_ceiling: trained on the training articles, scored on the "
                                "hook's held-out ones); the training report shows it beside the judge's recognition."})

    hook_perturb: list[str] | None = field(
        default=None,
        metadata={"help": "Perturbed conditions scored at every evaluation beside the plain pairs (word-shuffle, "
                  "sentence-shuffle, truncate-to-equal-length, lowercase-strip-punct; a list or a comma-separated "
                  "string): both summaries of every held-out pair perturbed (selfrec_ft.scoring.perturb). "
                  "Add individual-recognition to hook_tasks for hit and false-alarm rates."})
    hook_perturb_seed: int = field(default=0, metadata={"help": "Seed of the hook's perturbations."})

    def __post_init__(self) -> None:
        self.hook_tasks = split_list(self.hook_tasks) or list(DEFAULT_HOOK_TASKS)
        self.hook_others = split_list(self.hook_others)
        self.hook_perturb = split_list(self.hook_perturb)


@dataclass
class AttributeDPOArguments:
    """What attribute DPO trains on and how the shift is measured (fields must not collide with
    ``DPOConfig``, ``ModelConfig`` or ``EvalHookArguments``)."""

    attribute: str = field(
        default="lengthy",
        metadata={"help": "P2 property to inject or remove: exact P2 name, slug or index (a property with a "
                  "deterministic measure: lengthy, well_formatted, informal, non_repetitive, complex_language)."},
    )
    direction: str = field(
        default="inject",
        metadata={"help": "inject: chosen summaries have more of the attribute; remove: less.",
                  "choices": list(DPO_DIRECTIONS)},
    )
    corpus: str | None = field(
        default=None,
        metadata={"help": "In-domain corpus directory: training articles (the first n_articles) and held-out "
                  "evaluation articles (the rest). `demo://short` builds the demo corpus."},
    )
    out_of_domain: str | None = field(
        default=None,
        metadata={"help": "Out-of-domain corpus directory (all its articles are held out). `demo://highlights` "
                  "allowed. Leave empty to measure in-domain only."},
    )
    in_domain_style: str = field(
        default="short", metadata={"help": "Generation template of the in-domain corpus (short: XSUM-like, "
                                   "highlights: CNN-like).", "choices": list(GENERATION_DOMAINS)})
    out_of_domain_style: str = field(
        default="highlights", metadata={"help": "Generation template of the out-of-domain corpus.",
                                        "choices": list(GENERATION_DOMAINS)})
    self_source: str | None = field(
        default=None,
        metadata={"help": "The evaluator's own summaries already in the corpora (e.g. llama2-7b-chat), if any: "
                  "left out of the default others (its fresh greedy summaries stand in for it) and used as the "
                  "self source of the evaluation hook."},
    )
    others: list[str] | None = field(
        default=None,
        metadata={"help": "Other sources the self summaries are judged against (a list or a comma-separated "
                  "string). Default: every corpus source but self_source."},
    )
    n_articles: int = field(default=500, metadata={"help": "Train on the first N in-domain articles; evaluate "
                                                   "on the articles after them."})
    num_candidates: int = field(default=8, metadata={"help": "Sampled candidate summaries per training article (K)."})
    sample_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the candidates."})
    sample_top_p: float = field(default=1.0, metadata={"help": "Nucleus (top-p) filter of the candidates."})
    sample_seed: int = field(default=0, metadata={"help": "Seed of the candidates (each has its own generator)."})
    min_gap: float = field(default=0.0, metadata={"help": "Smallest attribute gap of a DPO pair (in the "
                                                  "attribute's unit), beyond P2's comparison rule."})
    gap_weight: float = field(default=0.25, metadata={"help": "Reward for a larger attribute gap in the pair "
                                                      "choice (select_dpo_pairs)."})
    pairs_per_article: int = field(default=1, metadata={"help": "DPO pairs per training article."})
    match_controls: list[str] | None = field(
        default=None, metadata={"help": "Properties to keep equal within a pair (default: every other "
                                "deterministic property)."})
    max_new_tokens: int = field(default=100, metadata={"help": "Generation budget of every summary (P1: 100-140)."})
    drop_truncated: bool = field(
        default=True,
        metadata={"help": "Leave candidates that ran into max_new_tokens (their text re-tokenizes to max_new_tokens "
                  "tokens or more) out of the pairs: they are cut-off text, not summaries the model ended, and a "
                  "DPO pair would show them ending with EOS."},
    )
    generation_batch_size: int = field(default=8, metadata={"help": "Sequences per generation batch."})
    generation_max_length: int | None = field(
        default=None,
        metadata={"help": "Bound on prompt + max_new_tokens at generation; longer articles are shortened (never "
                  "summaries). Default: DPOConfig.max_length - 8 (so every pair fits the DPO max_length), at "
                  "most the model's context."},
    )
    eval_limit: int | None = field(
        default=100, metadata={"help": "Held-out articles per domain for the before/after measurements (None: all)."})
    score_batch_size: int = field(default=8, metadata={"help": "Scoring batch size of the before/after evaluation."})
    bootstrap_resamples: int = field(default=2000, metadata={"help": "Bootstrap resamples of every CI."})
    prompt_preset: str = field(
        default=DEFAULT_PRESET,
        metadata={"help": "Prompt preset name (panickssery2024, panickssery2024-exact) or a preset YAML path."},
    )
    sft_adapter: str | None = field(
        default=None,
        metadata={"help": "A LoRA adapter from the SFT recipe to start from: it is trained further (its LoRA "
                  "settings apply, not ModelConfig's) against a frozen copy of itself as the reference."},
    )
    demo_cache: str | None = field(
        default=None, metadata={"help": "Where `demo://` models and corpora are built (default: "
                                "$SELFREC_DEMO_CACHE or ~/.cache/selfrec_ft/demo)."})

    def __post_init__(self) -> None:
        self.others = split_list(self.others)
        self.match_controls = split_list(self.match_controls)


# --------------------------------------------------------------------------------------------------
# strict parsing


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def _raise_user_error(message: str):
    raise UserError(_one_line(message))


def _read_config(path: Path) -> tuple[dict, dict[tuple, int]]:
    """A recipe config (UTF-8 YAML mapping) and the line of every key (:func:`selfrec_ft.files.load_yaml`)."""
    from selfrec_ft.files import load_yaml

    data, lines = load_yaml(path, "config file")
    if data is None:
        return {}, lines
    if not isinstance(data, dict):
        raise UserError("a config file must be a YAML mapping of argument names to values", path)
    return data, lines


def _check_config(parser, path: Path) -> dict[tuple, int]:
    """Every top-level key of the config at ``path`` is a field of ``parser`` holding a value of its
    type (as TrlParser takes YAML values as defaults, a wrong type would otherwise surface
    mid-training); returns the key lines."""
    from selfrec_ft.cmdline import config_value_problem

    data, lines = _read_config(path)
    actions = {a.dest: a for a in parser._actions}
    for key, value in data.items():
        line = lines.get((key,))
        if key == "env":  # TrlParser: environment variables to set
            if not isinstance(value, dict):
                raise UserError("env must be a mapping of environment variable names to values", path, line)
            continue
        if key not in actions:
            kinds = [t.__name__ for t in getattr(parser, "dataclass_types", ())]
            what = ", ".join(kinds[:-1]) + f" or {kinds[-1]}" if len(kinds) > 1 else "".join(kinds) or "known"
            raise UserError(f'unknown key "{key}" (not a {what} field)', path, line)
        problem = config_value_problem(actions[key], value)
        if problem:
            raise UserError(f"{key} {problem}", path, line)
    return lines


def with_default_config(argv: Sequence[str], default_config: str | os.PathLike | None) -> list[str]:
    """``argv`` with ``--config=X`` split in two, and ``--config <default>`` put first when absent."""
    args: list[str] = []
    for a in argv:
        args.extend(["--config", a.split("=", 1)[1]] if a.startswith("--config=") else [a])
    if "--config" not in args and default_config is not None:
        args = ["--config", os.fspath(default_config), *args]
    return args


UNSET_WORDS = ("none", "null")
"""``--KEY none`` (or ``null``) on the command line clears an optional key a recipe's YAML set."""


def _optional_fields(parser) -> set[str]:
    """Fields of the parser's dataclasses that may be None (default None, or an Optional type)."""
    import dataclasses

    out = set()
    for kind in getattr(parser, "dataclass_types", ()):
        for f in dataclasses.fields(kind):
            if f.default is None or "None" in str(f.type) or "Optional" in str(f.type):
                out.add(f.name)
    return out


def split_unset(parser, args: list[str]) -> tuple[list[str], set[str]]:
    """``args`` without the ``--KEY none`` / ``--KEY=null`` of optional fields, and those KEYs. A
    non-optional field keeps its ``none`` (the parser then says what is wrong with it)."""
    optional, out, unset, i = _optional_fields(parser), [], set(), 0
    while i < len(args):
        a = args[i]
        key, eq, value = a[2:].partition("=") if a.startswith("--") else ("", "", "")
        if not eq and i + 1 < len(args):
            value = args[i + 1]
        name = key.replace("-", "_")
        if name in optional and (eq or i + 1 < len(args)) and value.lower() in UNSET_WORDS:
            unset.add(name)
            i += 1 if eq else 2
            continue
        out.append(a)
        i += 1
    return out, unset


def _clear_defaults(parser, unset: set[str]) -> None:
    """Make None the default of every field in ``unset``, also after TrlParser applies the config's
    values as defaults (so each dataclass is built, and checked, with None)."""
    if not unset:
        return

    def clear():
        for action in parser._actions:
            if action.dest in unset:
                action.default = None

    original = parser.set_defaults_with_config

    def set_defaults_with_config(**config):
        remaining = original(**config)
        clear()
        return remaining

    parser.set_defaults_with_config = set_defaults_with_config
    clear()


def parse_args_and_config_strict(parser, argv: Sequence[str] | None = None,
                                 default_config: str | os.PathLike | None = None) -> tuple:
    """``parser.parse_args_and_config`` that fails with a one-line :class:`UserError`.

    ``parser`` is a ``trl.TrlParser``. An unknown top-level YAML key names the config file and line;
    an unknown flag, a bad value (argparse) or a value a dataclass rejects (e.g. ``bf16`` without a
    GPU) gives one line too. Without ``--config``, ``default_config`` is used; flags still override,
    and ``--KEY none`` (or ``null``) clears an optional key (:func:`split_unset`).
    """
    args = with_default_config(list(sys.argv[1:] if argv is None else argv), default_config)
    args, unset = split_unset(parser, args)
    _clear_defaults(parser, unset)
    config_path, config_lines = None, {}
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise UserError("--config needs a file path")
        config_path = Path(args[i + 1])
        config_lines = _check_config(parser, config_path)
    parser.error = _raise_user_error  # argparse errors: one line, no usage dump
    user_set = {a.split("=", 1)[0] for a in args} | {k[0] for k in config_lines if len(k) == 1}
    try:
        with warnings.catch_warnings():
            if not user_set & {"--gradient_checkpointing", "gradient_checkpointing"}:
                # TRL's own default (gradient_checkpointing=True) trips transformers' rename warning
                # on every config that leaves activation_checkpointing unset; one the user wrote
                # still warns
                warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated",
                                        category=FutureWarning)
            *parsed, remaining = parser.parse_args_and_config(args, return_remaining_strings=True)
    except UserError:
        raise
    except (ValueError, TypeError) as exc:  # a dataclass __post_init__ rejecting a value
        raise UserError(_one_line(exc), config_path) from None
    if remaining:
        raise UserError(f"unknown option(s): {' '.join(remaining)}")
    flags = {a.split("=", 1)[0].lstrip("-").replace("-", "_") for a in args if a.startswith("--")} | unset
    for name, problem in value_problems(*parsed):
        if name in flags:
            raise UserError(f"--{name} {problem}")
        in_config = (name,) in config_lines
        raise UserError(f"{name} {problem}", config_path if in_config else None, config_lines.get((name,)))
    return tuple(parsed)


# --------------------------------------------------------------------------------------------------
# values


def _is_steps(strategy) -> bool:
    return str(getattr(strategy, "value", strategy)) == "steps"


def value_problems(*groups) -> list[tuple[str, str]]:
    """``(field, "must be ..., got X")`` for every value of the recipes' argument groups (SFTConfig /
    DPOConfig, SelfRecDataArguments, AttributeDPOArguments, EvalHookArguments) that training would
    silently misuse: ``max_steps: -3`` trained the whole schedule, ``0`` saved a "finished" model
    after one step, a batch size of 0 or a negative learning rate got far into loading first."""
    from transformers import TrainingArguments

    out: list[tuple[str, str]] = []

    def at_least(obj, name: str, low, what: str = "", optional: bool = False) -> None:
        v = getattr(obj, name, None)
        if v is None and optional:
            return
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or v < low:
            out.append((name, f"must be at least {low}{what}, got {v!r}"))

    def above(obj, name: str, low, what: str = "") -> None:
        v = getattr(obj, name, None)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > low:
            out.append((name, f"must be above {low}{what}, got {v!r}"))

    for g in groups:
        if isinstance(g, TrainingArguments):
            if g.max_steps != -1:
                at_least(g, "max_steps", 1, " (or -1: train for num_train_epochs)")
            else:
                above(g, "num_train_epochs", 0, " (with max_steps -1 it sets the length of training)")
            at_least(g, "per_device_train_batch_size", 1)
            at_least(g, "gradient_accumulation_steps", 1)
            at_least(g, "learning_rate", 0)
            at_least(g, "dataloader_num_workers", 0)
            at_least(g, "max_length", 1, optional=True)
            if _is_steps(g.save_strategy):
                above(g, "save_steps", 0, " (save_strategy: steps; below 1 it is a fraction of the training steps)")
            if _is_steps(g.logging_strategy):
                above(g, "logging_steps", 0, " (logging_strategy: steps; below 1 it is a fraction of the training "
                      "steps)")
        elif isinstance(g, SelfRecDataArguments):
            at_least(g, "n_articles", 1)
            at_least(g, "prompt_max_length", 1, optional=True)
            if g.flip_fraction is not None and not 0 <= g.flip_fraction <= 1:
                out.append(("flip_fraction", f"must be between 0 and 1, got {g.flip_fraction!r}"))
        elif isinstance(g, AttributeDPOArguments):
            for name, low in (("n_articles", 1), ("num_candidates", 2), ("pairs_per_article", 1),
                              ("max_new_tokens", 1), ("generation_batch_size", 1), ("score_batch_size", 1),
                              ("bootstrap_resamples", 100)):
                at_least(g, name, low)
            at_least(g, "eval_limit", 1, " (or empty for all)", optional=True)
            at_least(g, "generation_max_length", 1, optional=True)
        elif isinstance(g, EvalHookArguments):
            at_least(g, "hook_limit", 1, " (or empty for all)", optional=True)
            at_least(g, "hook_batch_size", 1)
            for name, low in (("hook_canary_articles", 1), ("hook_canary_generate", 0),
                              ("hook_canary_max_new_tokens", 1)):
                at_least(g, name, low)
            for name in ("hook_in_domain_kind", "hook_out_of_domain_kind"):
                if getattr(g, name) not in (None, *GENERATION_DOMAINS):
                    out.append((name, f"must be one of {', '.join(GENERATION_DOMAINS)}, got {getattr(g, name)!r}"))
            bad = [k for k in g.hook_perturb or () if k not in PERTURBATIONS]
            if bad:
                out.append(("hook_perturb", f"unknown perturbation {', '.join(map(repr, bad))}; use "
                            f"{', '.join(PERTURBATIONS)}"))
    return out


def check_values(*groups) -> None:
    """:func:`value_problems` of argument groups built in Python (the recipes check theirs while
    parsing, naming the config line): the first one is a :class:`UserError`."""
    for name, problem in value_problems(*groups):
        raise UserError(f"{name} {problem}")
