"""Attribute DPO: inject or remove one of P2's attributes in the evaluator's own writing, and measure
the shift it causes (PROTOCOL.md §6).

:func:`run_attribute_dpo` runs, in ``output_dir``:

a. **candidates**: K sampled summaries per training article (the first ``n_articles`` of the
   in-domain corpus) from the pre-DPO evaluator (``candidates/``; resumable, sharded over processes);
b. **pairs**: :func:`~selfrec_ft.attributes.dpo_pairs.select_dpo_pairs` picks (chosen, rejected)
   pairs that differ in the attribute in the intended direction and are matched on the others
   (``matching.json``, ``pairs.jsonl``);
c. **before**: the pre-DPO model's greedy summaries (source ``self-before-dpo``) on the held-out
   in-domain articles and on the out-of-domain corpus (``summaries/``), their attribute, and the
   model's pairwise recognition and preference of them against the other sources (``eval/before/``);
d. **training**: TRL's ``DPOTrainer`` on the pairs with a LoRA adapter (``peft_config``) and
   ``ref_model=None``: TRL then keeps no reference copy and computes the reference log-probs with
   the adapter disabled (the base model). With ``sft_adapter`` the SFT adapter is trained further
   and TRL's reference is a frozen copy of it (its ``ref`` adapter), again without a second model;
e. **after**: the DPO model's greedy summaries (``self-after-dpo``) on the same articles, their
   attribute, and its recognition and preference against the same others and against its own
   pre-DPO summaries (``eval/after/``);
f. ``shift.json`` / ``shift.md`` (:mod:`selfrec_ft.training.shift`), plus the adapter, the tokenizer,
   ``resolved_config.yaml`` and ``training_manifest.json``.

Every stage resumes: generation and scoring skip what their files already hold, training resumes
from the last checkpoint, and a finished training (manifest ``status: done``) is loaded instead of
repeated. A directory holding a run with other settings or other pairs is refused.

One model is in memory throughout: the pre-DPO model measures itself, becomes the trainer's policy,
and measures itself again after training.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfrec_ft.errors import UserError
from selfrec_ft.generation.clean import DOMAINS as STYLES
from selfrec_ft.prompts.templates import DEFAULT_PRESET
from selfrec_ft.training.args import AttributeDPOArguments, split_list  # noqa: F401 (re-export)

logger = logging.getLogger(__name__)

SELF_BEFORE = "self-before-dpo"
SELF_AFTER = "self-after-dpo"
SAMPLED = "self-sampled"
from selfrec_ft.defaults import DPO_DIRECTIONS as DIRECTIONS  # noqa: E402
EVAL_TASKS = ("pairwise-recognition", "pairwise-preference")
CANDIDATES_DIR = "candidates"
SUMMARIES_DIR = "summaries"
EVAL_DIR = "eval"
SETTINGS_FILE = "settings.json"
MATCHING_FILE = "matching.json"
PAIRS_FILE = "pairs.jsonl"
SHIFT_JSON = "shift.json"
SHIFT_MD = "shift.md"
COMPLETION_MARGIN = 8
"""Tokens kept free beyond ``max_new_tokens`` when the DPO ``max_length`` bounds generation: a
re-rendered completion adds the chat template's spacing and EOS."""
TRL_COLUMNS = ("prompt", "chosen", "rejected")


# --------------------------------------------------------------------------------------------------
# small helpers


def _state():
    from accelerate import PartialState

    return PartialState()


def check_settings(directory: Path, settings: dict[str, Any], what: str, is_main: bool = True) -> None:
    """Record ``settings`` in ``directory/settings.json``; refuse a directory made with others."""
    from selfrec_ft.jsonl import atomic_write_json

    path = directory / SETTINGS_FILE
    settings = json.loads(json.dumps(settings, default=str))
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"malformed JSON ({exc.msg})", path, exc.lineno) from None
        changed = [k for k in settings if k in old and old[k] != settings[k]]
        if changed:
            k = changed[0]
            raise UserError(f"these {what} were made with {k}={old[k]!r}, not {settings[k]!r}; use another "
                            "output_dir (or delete this one)", path)
        return
    if is_main:
        atomic_write_json(path, settings)


def resolve_attribute(name: str):
    """The P2 property to train on; it needs a deterministic measure (no judge runs here)."""
    from selfrec_ft.attributes.registry import deterministic_properties, get_property

    prop = get_property(name)
    if prop.method != "deterministic":
        names = ", ".join(p.slug for p in deterministic_properties())
        raise UserError(f"property {prop.name!r} needs a judge model; attribute DPO measures its attribute "
                        f"deterministically: use one of {names}")
    return prop


def generation_messages(tokenizer, corpus, article_ids: Sequence[str], style: str, preset: str,
                        max_length: int | None, max_new_tokens: int) -> dict[str, list[dict[str, str]]]:
    """The generation prompt messages per article, with the article shortened exactly as
    :func:`~selfrec_ft.generation.generate.generate_summaries` shortens it (so a DPO pair is
    trained on the prompt its candidates were sampled from)."""
    from selfrec_ft.prompts.templates import _fit_article, chat_text, encode, load_preset

    template = load_preset(preset).task(f"generate-{style}")
    budget = None if max_length is None else max_length - max_new_tokens

    def length_of(v: dict[str, str]) -> int:
        return len(encode(tokenizer, chat_text(tokenizer, template.messages(**v), True)))

    out = {}
    for aid in article_ids:
        values, _ = _fit_article({"article": corpus.article(aid).text}, length_of, budget, template.name)
        out[aid] = template.messages(**values)
    return out


# --------------------------------------------------------------------------------------------------
# generation (sharded over processes, resumable)


@dataclass
class Generated:
    """Generated texts of one source: ``texts[article_id][candidate]``, and the (article, candidate)
    keys whose generation was empty after cleaning."""

    texts: dict[str, dict[int, str]]
    empty: set[tuple[str, int]]

    def first(self) -> dict[str, str]:
        return {a: c[min(c)] for a, c in self.texts.items() if c}


def _shard_path(directory: Path, stem: str, rank: int) -> Path:
    return directory / (f"{stem}.jsonl" if rank == 0 else f"{stem}.rank{rank}.jsonl")


def _shard_files(directory: Path, stem: str) -> tuple[list[Path], list[Path]]:
    files = sorted(directory.glob(f"{stem}.jsonl")) + sorted(directory.glob(f"{stem}.rank*.jsonl"))
    out = [p for p in files if not p.name.endswith(".failures.jsonl")]
    fails = sorted(directory.glob(f"{stem}.failures.jsonl")) + sorted(directory.glob(f"{stem}.rank*.failures.jsonl"))
    return out, fails


def read_generated(directory: Path, stem: str, source: str) -> Generated:
    """Rows of ``source`` from every shard file of ``stem`` (duplicates of a key: the first wins)."""
    from selfrec_ft.jsonl import read_jsonl_rows

    files, fails = _shard_files(directory, stem)
    texts: dict[str, dict[int, str]] = {}
    for path in files:
        for row in read_jsonl_rows(path):
            if row.get("source") == source:
                texts.setdefault(str(row["id"]), {}).setdefault(int(row.get("candidate", 0)), row["summary"])
    empty = set()
    for path in fails:
        for row in read_jsonl_rows(path):
            key = (str(row["id"]), int(row.get("candidate", 0)))
            if row.get("source") == source and key[1] not in texts.get(key[0], {}):
                empty.add(key)
    return Generated(texts, empty)


def generate_sharded(model, tokenizer, corpus, article_ids: Sequence[str], source: str, directory: Path,
                     stem: str, *, num_return_sequences: int = 1, sample: bool = False, temperature: float = 1.0,
                     top_p: float = 1.0, seed: int = 0, style: str = "short", max_new_tokens: int = 100,
                     batch_size: int = 8, max_length: int | None = None, preset: str = DEFAULT_PRESET,
                     progress: bool = True) -> Generated:
    """Generate the missing ``source`` summaries of ``article_ids`` into ``directory/stem*.jsonl``.

    With several processes each generates a share of the articles into its own file; all then read
    every file. Keys already present in any file are not generated again.
    """
    from selfrec_ft.generation.generate import generate_summaries

    state = _state()
    directory.mkdir(parents=True, exist_ok=True)
    have = read_generated(directory, stem, source)
    todo = [a for a in article_ids
            if any(k not in have.texts.get(a, {}) for k in range(num_return_sequences))]
    mine = todo[state.process_index::state.num_processes]
    if mine:
        generate_summaries((model, tokenizer), corpus, source, prompt_preset=preset, domain=style,
                           max_new_tokens=max_new_tokens, batch_size=batch_size, article_ids=mine,
                           max_length=max_length, sample=sample, temperature=temperature, top_p=top_p,
                           num_return_sequences=num_return_sequences, seed=seed,
                           out=_shard_path(directory, stem, state.process_index),
                           progress=progress and state.is_main_process)
    state.wait_for_everyone()
    got = read_generated(directory, stem, source)
    wanted = set(article_ids)
    return Generated({a: t for a, t in got.texts.items() if a in wanted}, {k for k in got.empty if k[0] in wanted})


def attribute_values(prop, generated: Generated, article_ids: Sequence[str]) -> tuple[dict[str, float], int]:
    """The attribute of each article's (greedy) summary; an empty generation counts as the empty
    text (for ``lengthy``: 0 words). Returns the values and the number of empty summaries."""
    texts = generated.first()
    values, n_empty = {}, 0
    for aid in article_ids:
        if aid in texts:
            values[aid] = prop.measure(texts[aid])
        elif (aid, 0) in generated.empty:
            values[aid] = prop.measure("")
            n_empty += 1
    return values, n_empty


# --------------------------------------------------------------------------------------------------
# model and trainer


def load_policy(model_args, training_args, sft_adapter: str | None = None):
    """The pre-DPO evaluator (base, 4/8-bit base, or base + trainable SFT adapter) and its tokenizer:
    the one model instance of the run, on this process's device."""
    import torch
    from transformers import AutoModelForCausalLM

    from selfrec_ft.models.loading import adapter_base, is_adapter_dir, load_tokenizer
    from selfrec_ft.training.sft import _absolute_if_local, _load_quantized_model, _model_init_kwargs, training_mode

    if sft_adapter is not None:
        if not is_adapter_dir(sft_adapter):
            raise UserError("not a LoRA adapter directory (no adapter_config.json)", sft_adapter)
        if not model_args.model_name_or_path:
            model_args.model_name_or_path = adapter_base(sft_adapter)
    if not model_args.model_name_or_path:
        raise UserError("model_name_or_path is not set")
    model_args.model_name_or_path = _absolute_if_local(model_args.model_name_or_path)
    if sft_adapter is not None:
        base = _absolute_if_local(adapter_base(sft_adapter))
        if base != model_args.model_name_or_path:
            logger.warning("sft_adapter %s was trained on %s; loading it on %s", sft_adapter, base,
                           model_args.model_name_or_path)
    elif not model_args.use_peft:
        raise UserError("attribute DPO trains a LoRA adapter (the base with the adapter disabled is the reference, "
                        "so no second model is loaded): set use_peft: true, or give sft_adapter")
    if sft_adapter is None:
        mode = training_mode(model_args)
    else:  # the SFT adapter is trained further, on a quantized base if asked
        mode = "qlora" if (model_args.load_in_4bit or model_args.load_in_8bit) else "lora"
    path = model_args.model_name_or_path
    if mode == "qlora":
        model = _load_quantized_model(path, model_args, training_args)
    else:
        kwargs = _model_init_kwargs(model_args, training_args)
        dtype = kwargs.get("dtype")
        if isinstance(dtype, str) and dtype != "auto":
            kwargs["dtype"] = getattr(torch, dtype)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        model.to(training_args.device)
    tokenizer = load_tokenizer(sft_adapter or path, trust_remote_code=training_args.trust_remote_code)
    if sft_adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, sft_adapter, is_trainable=True)
    model.eval()
    return model, tokenizer, mode


@dataclass
class SequenceFacts:
    """Token lengths of the prepared DPO rows (as TRL tokenized them)."""

    lengths: list[int]  # prompt + longer completion per row
    chosen_tokens: list[int]
    rejected_tokens: list[int]
    ends_with_eos: float  # share of completions that end with EOS


def check_dpo_sequences(prepared, max_length: int | None, eos_ids: set[int]) -> SequenceFacts:
    """Refuse rows TRL would truncate (the end of a completion, EOS included, carries the length
    signal); report how many completions end with EOS."""
    lengths, ch, rj, eos = [], [], [], 0
    for p, c, r in zip(prepared["prompt_ids"], prepared["chosen_ids"], prepared["rejected_ids"]):
        lengths.append(len(p) + max(len(c), len(r)))
        ch.append(len(c))
        rj.append(len(r))
        eos += bool(c and c[-1] in eos_ids) + bool(r and r[-1] in eos_ids)
    if max_length is not None:
        too_long = [n for n in lengths if n > max_length]
        if too_long:
            raise UserError(f"{len(too_long)} of {len(lengths)} DPO pairs are longer than max_length={max_length} "
                            f"tokens (longest {max(too_long)}); TRL would cut their completions. Raise max_length or "
                            "lower generation_max_length (articles are shortened to fit)")
    return SequenceFacts(lengths, ch, rj, eos / (2 * len(lengths)) if lengths else 0.0)


def build_dpo_trainer(model, tokenizer, dataset, training_args, model_args, callbacks=()):
    """TRL ``DPOTrainer`` on the pairs' ``prompt``/``chosen``/``rejected`` columns with no reference
    model: a new LoRA adapter from ``model_args`` on a plain model, or the given adapter of a PEFT
    model trained further. Raises if TRL kept a reference model anyway."""
    from accelerate.utils import is_peft_model
    from trl import DPOTrainer, get_peft_config

    if getattr(training_args, "sync_ref_model", False):
        raise UserError("sync_ref_model needs a separate reference model; attribute DPO uses the adapter-disabled "
                        "base as the reference: set sync_ref_model: false")
    peft_config = None if is_peft_model(model) else get_peft_config(model_args)
    if peft_config is None and not is_peft_model(model):
        raise UserError("attribute DPO trains a LoRA adapter: set use_peft: true")
    trainer = DPOTrainer(model=model, ref_model=None, args=training_args,
                         train_dataset=dataset.select_columns(list(TRL_COLUMNS)), processing_class=tokenizer,
                         peft_config=peft_config, callbacks=list(callbacks))
    if trainer.ref_model is not None:
        raise RuntimeError("DPOTrainer loaded a separate reference model; expected the PEFT-disabled base")
    return trainer


def _cpu_precision(training_args) -> str | None:
    from selfrec_ft.training.sft import _cpu_precision as off

    return off(training_args)


def _check_layout(training_args) -> None:
    if getattr(training_args, "fsdp", None) or getattr(training_args, "deepspeed", None):
        raise UserError("attribute DPO generates and scores with the trained model in-process, which needs whole "
                        "(unsharded) weights: use one process or DDP, not FSDP/DeepSpeed")


# --------------------------------------------------------------------------------------------------
# the run


@dataclass
class DPOResult:
    output_dir: Path
    shift: dict[str, Any]
    markdown: str
    global_step: int
    trained_now: bool
    is_main_process: bool = True

    def summary(self) -> str:
        s = self.shift
        a = s.get("attribute_by_domain", {})
        lines = [f"{s['direction']} {s['attribute']!r}: " + "; ".join(
            f"{d.replace('_', '-')} {_fmt(v['before']['mean'])} -> {_fmt(v['after']['mean'])} "
            f"({_pct(v['relative_change'])})" for d, v in a.items())]
        for d, m in s.get("preference", {}).items():
            if m:
                lines.append(f"self-preference {d.replace('_', '-')}: {_fmt((m.get('before') or {}).get('mean'))} -> "
                             f"{_fmt((m.get('after') or {}).get('mean'))}")
        lines.append(f"adapter, tokenizer, shift.json, shift.md in {self.output_dir}")
        return "\n".join(lines)


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:+.1f}%"


@dataclass
class _Domain:
    name: str
    corpus: Any
    style: str
    skip_first: int
    article_ids: list[str]
    others: list[str]


def _domains(dpo_args, in_corpus, out_corpus) -> list[_Domain]:
    heldout = [a.id for a in in_corpus.heldout_articles(dpo_args.n_articles, dpo_args.eval_limit)]
    if not heldout:
        raise UserError(f"no held-out in-domain articles: the corpus has {len(in_corpus.articles)} and the first "
                        f"{dpo_args.n_articles} are training articles", in_corpus.path)
    out = [_Domain("in_domain", in_corpus, dpo_args.in_domain_style, dpo_args.n_articles, heldout, [])]
    if out_corpus is not None:
        ids = [a.id for a in out_corpus.heldout_articles(0, dpo_args.eval_limit)]
        out.append(_Domain("out_of_domain", out_corpus, dpo_args.out_of_domain_style, 0, ids, []))
    reserved = {SELF_BEFORE, SELF_AFTER, SAMPLED}
    for d in out:
        clash = reserved & set(d.corpus.sources())
        if clash:
            raise UserError(f"the corpus already has a source named {sorted(clash)[0]!r}, which this runner writes",
                            d.corpus.path)
        if dpo_args.others is None:
            d.others = [s for s in d.corpus.sources() if s != dpo_args.self_source]
        else:
            d.corpus.require_sources(dpo_args.others)
            d.others = list(dpo_args.others)
        if not d.others:
            raise UserError("no other source to judge the self summaries against", d.corpus.path)
    return out


def _resolve_demo(dpo_args, model_args, hook_args, training_args) -> dict[str, dict[str, str]]:
    from selfrec_ft.training.demo_assets import SCHEME, demo_corpus, is_demo_ref, resolve_demo_refs

    ctx = lambda: training_args.main_process_first(desc="demo assets")  # noqa: E731
    refs = resolve_demo_refs(dpo_args, model_args, hook_args, cache=dpo_args.demo_cache, main_process_first=ctx)
    if is_demo_ref(dpo_args.out_of_domain):
        ref = dpo_args.out_of_domain
        with ctx():
            path = demo_corpus(ref[len(SCHEME):], dpo_args.demo_cache)
        dpo_args.out_of_domain = str(path.resolve())
        refs["out_of_domain"] = {"ref": ref, "path": dpo_args.out_of_domain}
    return refs


def _evaluate(model, tokenizer, domain: _Domain, self_source: str, others: list[str], summaries: dict[str, str],
              out_dir: Path, dpo_args, training_args, extra: Mapping[str, dict[str, str]] | None = None
              ) -> list[dict]:
    """Pairwise recognition + preference of ``summaries`` (as ``self_source``) against ``others`` on
    the domain's held-out articles (``out_dir``: examples.jsonl, report.json, report.md); returns
    the scoring rows of those articles."""
    import copy

    from selfrec_ft.jsonl import read_jsonl_rows
    from selfrec_ft.scoring.evaluate import EXAMPLES_FILE, evaluate

    corpus = copy.copy(domain.corpus)  # the same articles; summaries extended by the generated sources
    corpus.summaries = {**domain.corpus.summaries, **dict(extra or {}), self_source: dict(summaries)}
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    evaluate(model, corpus, out_dir, self_source, others=others, tasks=EVAL_TASKS, skip_first=domain.skip_first,
             limit=dpo_args.eval_limit, preset=dpo_args.prompt_preset, batch_size=dpo_args.score_batch_size,
             max_length=getattr(model.config, "max_position_embeddings", None), dtype=dtype, domain=domain.name,
             tokenizer=tokenizer, seed=training_args.seed, n_resamples=dpo_args.bootstrap_resamples,
             progress=not training_args.disable_tqdm)
    wanted = set(domain.article_ids)
    return [r for r in read_jsonl_rows(out_dir / EXAMPLES_FILE) if str(r.get("article_id")) in wanted]


def _attach_trained_adapter(model, out: Path):
    """The policy with the finished run's adapter (instead of training again)."""
    from accelerate.utils import is_peft_model
    from peft import PeftModel

    if is_peft_model(model):  # started from an SFT adapter: the saved adapter replaces it
        model.load_adapter(str(out), adapter_name="dpo")
        model.set_adapter("dpo")
    else:
        model = PeftModel.from_pretrained(model, str(out))
    model.eval()
    return model


def _fingerprint(pairs_sha: str, dpo_args, training_args, model_args) -> dict[str, Any]:
    """What makes two trainings the same: the pairs and the settings that change the adapter."""
    keys_t = ("learning_rate", "beta", "loss_type", "max_steps", "num_train_epochs", "per_device_train_batch_size",
              "gradient_accumulation_steps", "seed", "lr_scheduler_type", "warmup_steps", "weight_decay",
              "max_length", "optim", "label_smoothing")
    keys_m = ("model_name_or_path", "use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
              "load_in_4bit", "load_in_8bit", "use_rslora", "use_dora")
    return json.loads(json.dumps({
        "training_data_sha256": pairs_sha,
        "sft_adapter": dpo_args.sft_adapter,
        "training": {k: getattr(training_args, k, None) for k in keys_t},
        "model": {k: getattr(model_args, k, None) for k in keys_m},
    }, default=str))


def _check_args(dpo_args) -> None:
    if dpo_args.direction not in DIRECTIONS:
        raise UserError(f"direction must be inject or remove, not {dpo_args.direction!r}")
    for name, low in (("n_articles", 1), ("num_candidates", 2), ("pairs_per_article", 1), ("max_new_tokens", 1),
                      ("generation_batch_size", 1), ("score_batch_size", 1), ("bootstrap_resamples", 100)):
        if getattr(dpo_args, name) < low:
            raise UserError(f"{name} must be at least {low}, got {getattr(dpo_args, name)}")
    if dpo_args.eval_limit is not None and dpo_args.eval_limit < 1:
        raise UserError(f"eval_limit must be at least 1 (or empty for all), got {dpo_args.eval_limit}")
    if not dpo_args.corpus:
        raise UserError("corpus is not set: the in-domain corpus directory (or demo://short)")


def _brief(block: Mapping[str, Any]) -> dict[str, Any]:
    return {"mean": block["mean"], "ci95": block["ci95"], "n": block["n"]}


@dataclass
class _Run:
    """What the stages of one run share."""

    dpo_args: Any
    training_args: Any
    model_args: Any
    hook_args: Any
    out: Path
    prop: Any
    state: Any
    domains: list[_Domain]
    train_corpus: Any
    train_ids: list[str]
    demo_refs: dict
    precision_note: str | None
    model: Any = None
    tokenizer: Any = None
    mode: str = "lora"
    gen: dict = field(default_factory=dict)
    policy_id: dict = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    def load(self) -> None:
        """The policy, and the generation settings it bounds."""
        a = self.dpo_args
        self.model, self.tokenizer, self.mode = load_policy(self.model_args, self.training_args, a.sft_adapter)
        context = getattr(self.model.config, "max_position_embeddings", None)
        max_len = self.training_args.max_length
        gen_max = a.generation_max_length or (max_len - COMPLETION_MARGIN if max_len else None)
        if context is not None:
            gen_max = min(gen_max, context) if gen_max else context
        if gen_max is not None and gen_max <= a.max_new_tokens:
            raise UserError(f"generation_max_length {gen_max} leaves no room for a prompt with max_new_tokens "
                            f"{a.max_new_tokens}")
        self.gen = dict(max_new_tokens=a.max_new_tokens, batch_size=a.generation_batch_size, max_length=gen_max,
                        preset=a.prompt_preset, progress=not self.training_args.disable_tqdm)
        self.policy_id = {"model": self.model_args.model_name_or_path, "sft_adapter": a.sft_adapter,
                          "max_new_tokens": a.max_new_tokens, "max_length": gen_max, "preset": a.prompt_preset,
                          "dtype": self.model_args.dtype, "quantized": self.mode == "qlora"}

    # (a) + (b)
    def pairs(self):
        """Sample the candidates, select the pairs, write matching.json and pairs.jsonl."""
        from selfrec_ft.attributes.dpo_pairs import select_dpo_pairs
        from selfrec_ft.jsonl import atomic_write_json, atomic_write_text
        from selfrec_ft.prompts.templates import encode

        a = self.dpo_args
        logger.info("sampling %d candidates for each of %d training articles", a.num_candidates, len(self.train_ids))
        cand_dir = self.out / CANDIDATES_DIR
        check_settings(cand_dir, {**self.policy_id, "corpus": str(self.train_corpus.path), "style": a.in_domain_style,
                                  "temperature": a.sample_temperature, "top_p": a.sample_top_p,
                                  "seed": a.sample_seed}, "candidates", self.is_main)
        sampled = generate_sharded(self.model, self.tokenizer, self.train_corpus, self.train_ids, SAMPLED, cand_dir,
                                   "candidates", num_return_sequences=a.num_candidates, sample=True,
                                   temperature=a.sample_temperature, top_p=a.sample_top_p, seed=a.sample_seed,
                                   style=a.in_domain_style, **self.gen)
        numbers = {i: [k for k in sorted(sampled.texts[i]) if k < a.num_candidates]
                   for i in self.train_ids if i in sampled.texts}
        n_truncated = 0
        if a.drop_truncated:
            for i, ks in numbers.items():
                kept = [k for k in ks if len(encode(self.tokenizer, sampled.texts[i][k])) < a.max_new_tokens]
                n_truncated += len(ks) - len(kept)
                numbers[i] = kept
        candidates = {i: [sampled.texts[i][k] for k in ks] for i, ks in numbers.items()}
        messages = generation_messages(self.tokenizer, self.train_corpus, list(candidates), a.in_domain_style,
                                       a.prompt_preset, self.gen["max_length"], a.max_new_tokens)
        selection = select_dpo_pairs(candidates, self.prop.name, a.direction, messages,
                                     pairs_per_article=a.pairs_per_article, controls=a.match_controls,
                                     gap_weight=a.gap_weight, min_gap=a.min_gap, progress=False)
        # chosen_index / rejected_index count the kept candidates; add the sampled candidate numbers
        selection.dataset = selection.dataset.map(lambda r: {
            "chosen_candidate": numbers[r["article_id"]][r["chosen_index"]],
            "rejected_candidate": numbers[r["article_id"]][r["rejected_index"]]})
        matching = {**selection.report, "candidates": {
            "training_articles": len(self.train_ids), "articles_with_candidates": len(candidates),
            "per_article": a.num_candidates,
            "empty_after_cleaning": sum(1 for _, k in sampled.empty if k < a.num_candidates),
            "truncated_dropped": n_truncated,
            "temperature": a.sample_temperature, "top_p": a.sample_top_p, "seed": a.sample_seed}}
        if self.is_main:
            atomic_write_json(self.out / MATCHING_FILE, matching)
            atomic_write_text(self.out / PAIRS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                             for r in selection.dataset.to_list()))
        if matching["n_pairs"] == 0:
            raise UserError(f"no usable DPO pair: no two candidates of one article differ in {self.prop.name!r} in "
                            f"the {a.direction} direction (see {self.out / MATCHING_FILE}); raise num_candidates or "
                            "sample_temperature, or lower min_gap")
        logger.info("%d DPO pairs from %d articles", matching["n_pairs"], matching["n_articles_used"])
        return selection, matching

    # (c) and (e)
    def measure(self, source: str, extra: Mapping[str, Mapping[str, dict[str, str]]] | None = None
                ) -> dict[str, dict[str, Any]]:
        """Per domain: the current model's greedy summaries as ``source``, their attribute values, and
        its pairwise judgements of them against the others (and against ``extra`` sources)."""
        sum_dir = self.out / SUMMARIES_DIR
        check_settings(sum_dir, {**self.policy_id, "corpora": {d.name: str(d.corpus.path) for d in self.domains},
                                 "styles": {d.name: d.style for d in self.domains}}, "summaries", self.is_main)
        stage = "before" if source == SELF_BEFORE else "after"
        out = {}
        for d in self.domains:
            g = generate_sharded(self.model, self.tokenizer, d.corpus, d.article_ids, source, sum_dir, d.name,
                                 style=d.style, **self.gen)
            values, n_empty = attribute_values(self.prop, g, d.article_ids)
            ext = dict((extra or {}).get(d.name, {}))
            rows = _evaluate(self.model, self.tokenizer, d, source, d.others + list(ext), g.first(),
                             self.out / EVAL_DIR / stage / d.name, self.dpo_args, self.training_args, extra=ext)
            out[d.name] = {"summaries": g.first(), "values": values, "n_empty": n_empty, "rows": rows}
        return out

    # (d)
    def train(self, selection, matching, callbacks=()) -> tuple[int, dict[str, Any], bool, Any]:
        """Train (resuming from a checkpoint), or load the adapter of a finished run with the same
        pairs and settings. Returns the global step, the train metrics, whether it trained now and
        the trainer (None when it did not)."""
        from selfrec_ft.jsonl import atomic_write_json
        from selfrec_ft.training import manifest as mf
        from selfrec_ft.training.hook import hook_from_args
        from selfrec_ft.training.sft import resolve_resume

        a, t, out = self.dpo_args, self.training_args, self.out
        pairs_sha = mf.sha256_rows(selection.dataset, columns=TRL_COLUMNS)
        fingerprint = _fingerprint(pairs_sha, a, t, self.model_args)
        old = mf.read_manifest(out)
        if old is not None and old.get("fingerprint") not in (None, fingerprint):
            raise UserError("this output directory holds a DPO run on other pairs or with other training settings; "
                            "use another output_dir", out / mf.MANIFEST_FILE)
        if old is not None and old.get("status") == "done" and (out / "adapter_config.json").is_file():
            logger.info("training already done in %s; loading its adapter", out)
            self.model = _attach_trained_adapter(self.model, out)
            return int(old.get("global_step", 0)), dict(old.get("train_metrics") or {}), False, None

        hook = None
        if self.hook_args is not None and (self.hook_args.hook_in_domain or self.hook_args.hook_out_of_domain):
            if not a.self_source:
                raise UserError("the evaluation hook scores the corpus's own summaries of the evaluator: set "
                                "self_source")
            hook = hook_from_args(self.hook_args, a, t.output_dir, self.tokenizer)
        trainer = build_dpo_trainer(self.model, self.tokenizer, selection.dataset, t, self.model_args,
                                    list(callbacks) + ([hook] if hook else []))
        if hook is not None:
            hook.trainer = trainer
        seq = check_dpo_sequences(trainer.train_dataset, t.max_length, {self.tokenizer.eos_token_id})
        resume = resolve_resume(t)
        manifest = {
            "status": "training", "created": mf.now_iso(), "mode": self.mode,
            "model": self.model_args.model_name_or_path, "sft_adapter": a.sft_adapter, "attribute": self.prop.name,
            "direction": a.direction, "pairs": matching["n_pairs"],
            "train_article_ids": list(dict.fromkeys(selection.dataset["article_id"])),
            "training_data_sha256": pairs_sha, "fingerprint": fingerprint,
            "sequence_tokens": {"max": max(seq.lengths), "mean": sum(seq.lengths) / len(seq.lengths)},
            "completion_tokens": {"chosen_mean": sum(seq.chosen_tokens) / len(seq.chosen_tokens),
                                  "rejected_mean": sum(seq.rejected_tokens) / len(seq.rejected_tokens)},
            "completions_ending_with_eos": seq.ends_with_eos,
            "reference": ("the base with the adapter disabled (PEFT); no ref_model" if a.sft_adapter is None
                          else "a frozen copy ('ref') of the SFT adapter; no ref_model"),
            "demo_refs": self.demo_refs,
            "precision": {"bf16": bool(t.bf16), "fp16": bool(t.fp16), "dtype": self.model_args.dtype,
                          "note": self.precision_note},
            "num_processes": trainer.accelerator.num_processes, "resumed_from": resume,
            "library_versions": mf.library_versions(),
        }
        self.state.wait_for_everyone()
        if self.is_main:
            mf.write_resolved_config(out, a, t, self.model_args, self.hook_args)
            atomic_write_json(out / mf.MANIFEST_FILE, manifest)
        logger.info("DPO training on %d pairs", matching["n_pairs"])
        result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(str(out))
        trainer.save_state()
        metrics, step = dict(result.metrics), int(trainer.state.global_step)
        manifest.update(status="done", finished=mf.now_iso(), global_step=step, train_metrics=metrics,
                        output=str(out.resolve()))
        if self.is_main:
            atomic_write_json(out / mf.MANIFEST_FILE, manifest)
            if hook is not None:
                from selfrec_ft.training.report import write_training_report

                write_training_report(out)
        self.state.wait_for_everyone()
        self.model = trainer.accelerator.unwrap_model(trainer.model)
        self.model.eval()
        return step, metrics, True, trainer

    # (f)
    def shift(self, before, after, matching, global_step, metrics, trained_now) -> dict[str, Any]:
        from selfrec_ft.training.shift import attribute_shift, judgement_shift

        a, seed = self.dpo_args, self.training_args.seed
        attr, judged = {}, {}
        for d in self.domains:
            b, f = before[d.name], after[d.name]
            attr[d.name] = {**attribute_shift(b["values"], f["values"], a.bootstrap_resamples, seed),
                            "n_empty_before": b["n_empty"], "n_empty_after": f["n_empty"]}
            judged[d.name] = judgement_shift(b["rows"], f["rows"], d.others, SELF_BEFORE, a.bootstrap_resamples, seed)
        main = attr["in_domain"]
        return {
            "attribute": self.prop.name, "attribute_slug": self.prop.slug, "attribute_unit": self.prop.scale,
            "direction": a.direction,
            "attribute_before": _brief(main["before"]), "attribute_after": _brief(main["after"]),
            "relative_change": main["relative_change"], "relative_change_ci95": main["relative_change_ci95"],
            "difference": _brief(main["difference"]),
            "attribute_by_domain": attr,
            "preference": {d: judged[d].get("preference") for d in judged},
            "recognition": {d: judged[d].get("recognition") for d in judged},
            "pairs": {"n_pairs": matching["n_pairs"], "n_articles": matching["n_articles"],
                      "n_articles_used": matching["n_articles_used"], "skipped": matching["n_skipped"],
                      "truncated_candidates_dropped": matching["candidates"]["truncated_dropped"],
                      "target_gap_mean": matching["target_gap"]["mean"]},
            "training": {"global_step": global_step, "train_loss": metrics.get("train_loss"),
                         "trained_in_this_call": trained_now, "mode": self.mode, "sft_adapter": a.sft_adapter},
            "settings": {
                "model": self.model_args.model_name_or_path,
                "self_sources": {"before": SELF_BEFORE, "after": SELF_AFTER}, "corpus_self_source": a.self_source,
                "others": {d.name: d.others for d in self.domains},
                "eval_articles": {d.name: len(d.article_ids) for d in self.domains},
                "n_articles": a.n_articles, "num_candidates": a.num_candidates,
                "sample_temperature": a.sample_temperature, "sample_top_p": a.sample_top_p,
                "max_new_tokens": a.max_new_tokens, "generation_max_length": self.gen["max_length"],
                "loss_type": list(getattr(self.training_args, "loss_type", []) or []),
                "beta": getattr(self.training_args, "beta", None), "learning_rate": self.training_args.learning_rate,
                "bootstrap_resamples": a.bootstrap_resamples, "seed": seed,
            },
            "files": {"matching": MATCHING_FILE, "pairs": PAIRS_FILE, "candidates": CANDIDATES_DIR,
                      "summaries": SUMMARIES_DIR, "eval": EVAL_DIR},
        }


def run_attribute_dpo(dpo_args: AttributeDPOArguments, training_args, model_args, hook_args=None, callbacks=(), *,
                      teardown: bool = True) -> DPOResult:
    """Candidates, pairs, before, DPO training, after, shift report; see the module docstring.

    ``training_args`` is a ``trl.DPOConfig``, ``model_args`` a ``trl.ModelConfig`` (``use_peft``
    unless ``sft_adapter``), ``hook_args`` optional
    :class:`~selfrec_ft.training.args.EvalHookArguments` (the hook scores the corpus's fixed
    ``self_source`` summaries during training). ``callbacks`` are extra ``TrainerCallback``s. With
    ``teardown`` the process group is destroyed at the end, after the trainer is freed: call it
    last in a script.
    """
    from accelerate import PartialState

    from selfrec_ft.data.corpus import load_corpus
    from selfrec_ft.jsonl import atomic_write_json, atomic_write_text
    from selfrec_ft.training.shift import render_shift_markdown
    from selfrec_ft.training.teardown import release
    from selfrec_ft.training.threads import use_cpu_cores

    run = trainer = accelerator = None
    try:
        use_cpu_cores(training_args)
        _check_args(dpo_args)
        prop = resolve_attribute(dpo_args.attribute)
        _check_layout(training_args)
        demo_refs = _resolve_demo(dpo_args, model_args, hook_args, training_args)
        precision_note = _cpu_precision(training_args)
        in_corpus = load_corpus(dpo_args.corpus)
        out_corpus = load_corpus(dpo_args.out_of_domain) if dpo_args.out_of_domain else None
        run = _Run(dpo_args, training_args, model_args, hook_args, Path(training_args.output_dir), prop,
                   PartialState(), _domains(dpo_args, in_corpus, out_corpus), in_corpus,
                   [x.id for x in in_corpus.train_articles(dpo_args.n_articles)], demo_refs, precision_note)
        run.load()
        selection, matching = run.pairs()
        before = run.measure(SELF_BEFORE)
        step, metrics, trained_now, trainer = run.train(selection, matching, callbacks)
        accelerator = trainer.accelerator if trainer is not None else None
        after = run.measure(SELF_AFTER, extra={d: {SELF_BEFORE: b["summaries"]} for d, b in before.items()})
        shift = run.shift(before, after, matching, step, metrics, trained_now)
        markdown = render_shift_markdown(shift)
        if run.is_main:
            atomic_write_json(run.out / SHIFT_JSON, shift)
            atomic_write_text(run.out / SHIFT_MD, markdown)
        run.state.wait_for_everyone()
        is_main = run.is_main
    finally:
        # Free the trainer (model, optimizer, dataloaders) before destroying the process group.
        trainer = None
        if run is not None:
            run.model = None
        release(accelerator, teardown)
    return DPOResult(Path(training_args.output_dir), shift, markdown, step, trained_now, is_main_process=is_main)
