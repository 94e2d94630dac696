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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfrec_ft import markdown as md
from selfrec_ft.defaults import DEFAULT_HOOK_TASKS as EVAL_TASKS
from selfrec_ft.defaults import DPO_DIRECTIONS as DIRECTIONS
from selfrec_ft.errors import UserError
from selfrec_ft.scoring.scorer import Scorer
from selfrec_ft.scoring.spec import EvalSpec
from selfrec_ft.training.args import AttributeDPOArguments
from selfrec_ft.training.dpo_generation import (
    GenerationSettings,
    attribute_values,
    check_settings,
    generate_sharded,
    generation_messages,  # noqa: F401 (re-exported)
)
from selfrec_ft.training.dpo_model import (  # noqa: F401 (build_dpo_trainer, load_policy: re-exported)
    TRL_COLUMNS,
    attach_trained_adapter,
    build_dpo_trainer,
    check_dpo_sequences,
    check_layout,
    load_policy,
    training_fingerprint,
)

logger = logging.getLogger(__name__)

SELF_BEFORE = "self-before-dpo"
SELF_AFTER = "self-after-dpo"
SAMPLED = "self-sampled"
CANDIDATES_DIR = "candidates"
SUMMARIES_DIR = "summaries"
EVAL_DIR = "eval"
MATCHING_FILE = "matching.json"
PAIRS_FILE = "pairs.jsonl"
SHIFT_JSON = "shift.json"
SHIFT_MD = "shift.md"
COMPLETION_MARGIN = 8
"""Tokens kept free beyond ``max_new_tokens`` when the DPO ``max_length`` bounds generation: a
re-rendered completion adds the chat template's spacing and EOS."""


# --------------------------------------------------------------------------------------------------
# arguments


def resolve_attribute(name: str):
    """The P2 property to train on; it needs a deterministic measure (no judge runs here)."""
    from selfrec_ft.attributes.registry import deterministic_properties, get_property

    prop = get_property(name)
    if prop.method != "deterministic":
        names = ", ".join(p.slug for p in deterministic_properties())
        raise UserError(f"property {prop.name!r} needs a judge model; attribute DPO measures its attribute "
                        f"deterministically: use one of {names}")
    return prop


def _check_args(dpo_args, training_args=None, hook_args=None) -> None:
    from selfrec_ft.training.args import check_values
    from selfrec_ft.training.lifecycle import check_output_dir

    if dpo_args.direction not in DIRECTIONS:
        raise UserError(f"direction must be inject or remove, not {dpo_args.direction!r}")
    check_values(dpo_args, training_args, hook_args)
    if not dpo_args.corpus:
        raise UserError("corpus is not set: the in-domain corpus directory (or demo://short)")
    if training_args is not None:
        check_output_dir(training_args)


def _brief(block: Mapping[str, Any]) -> dict[str, Any]:
    return {"mean": block["mean"], "ci95": block["ci95"], "n": block["n"]}


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


def _brief(block: Mapping[str, Any]) -> dict[str, Any]:
    return {"mean": block["mean"], "ci95": block["ci95"], "n": block["n"]}


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
            f"{d.replace('_', '-')} {md.num(v['before']['mean'])} -> {md.num(v['after']['mean'])} "
            f"({md.pct(v['relative_change'])})" for d, v in a.items())]
        for d, m in s.get("preference", {}).items():
            if m:
                lines.append(f"self-preference {d.replace('_', '-')}: {md.num((m.get('before') or {}).get('mean'))} -> "
                             f"{md.num((m.get('after') or {}).get('mean'))}")
        lines.append(f"adapter, tokenizer, shift.json, shift.md in {self.output_dir}")
        return "\n".join(lines)


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
    gen: GenerationSettings = field(default_factory=GenerationSettings)
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
        self.gen = GenerationSettings(max_new_tokens=a.max_new_tokens, batch_size=a.generation_batch_size,
                                      max_length=gen_max, preset=a.prompt_preset,
                                      progress=not self.training_args.disable_tqdm)
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
        sampling = self.gen.replace(num_return_sequences=a.num_candidates, sample=True, style=a.in_domain_style,
                                    temperature=a.sample_temperature, top_p=a.sample_top_p, seed=a.sample_seed)
        sampled = generate_sharded((self.model, self.tokenizer), self.train_corpus, self.train_ids, SAMPLED, cand_dir,
                                   "candidates", sampling)
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
                                       a.prompt_preset, self.gen.max_length, a.max_new_tokens)
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
            cut = (f"; {n_truncated} of the sampled candidates reached max_new_tokens {a.max_new_tokens} and were "
                   "dropped as truncated: raise max_new_tokens") if n_truncated else ""
            raise UserError(f"no usable DPO pair: no two candidates of one article differ in {self.prop.name!r} in "
                            f"the {a.direction} direction (see {self.out / MATCHING_FILE}); raise num_candidates or "
                            f"sample_temperature, or lower min_gap{cut}")
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
        scorer = Scorer(self.model, self.tokenizer, batch_size=self.dpo_args.score_batch_size)
        out = {}
        for d in self.domains:
            g = generate_sharded((self.model, self.tokenizer), d.corpus, d.article_ids, source, sum_dir, d.name,
                                 self.gen.replace(style=d.style))
            values, n_empty = attribute_values(self.prop, g, d.article_ids)
            rows = self.judge(scorer, d, source, g.first(), stage, dict((extra or {}).get(d.name, {})))
            out[d.name] = {"summaries": g.first(), "values": values, "n_empty": n_empty, "rows": rows}
        return out

    def judge(self, scorer, domain: _Domain, source: str, summaries: dict[str, str], stage: str,
              extra: Mapping[str, dict[str, str]]) -> list[dict]:
        """Pairwise recognition + preference of ``summaries`` (as ``source``) against the domain's
        others and the ``extra`` sources on its held-out articles (``eval/<stage>/<domain>/``:
        examples.jsonl, report.json, report.md); returns the scoring rows of those articles."""
        import copy

        from selfrec_ft.jsonl import read_jsonl_rows
        from selfrec_ft.scoring.evaluate import EXAMPLES_FILE, evaluate

        corpus = copy.copy(domain.corpus)  # the same articles; summaries extended by the generated sources
        corpus.summaries = {**domain.corpus.summaries, **dict(extra), source: dict(summaries)}
        spec = EvalSpec(corpus=corpus, self_source=source, others=domain.others + list(extra), tasks=EVAL_TASKS,
                        skip_first=domain.skip_first, limit=self.dpo_args.eval_limit,
                        preset=self.dpo_args.prompt_preset, domain=domain.name, seed=self.training_args.seed,
                        n_resamples=self.dpo_args.bootstrap_resamples)
        out_dir = self.out / EVAL_DIR / stage / domain.name
        evaluate(scorer, spec, out_dir, progress=not self.training_args.disable_tqdm)
        wanted = set(domain.article_ids)
        return [r for r in read_jsonl_rows(out_dir / EXAMPLES_FILE) if str(r.get("article_id")) in wanted]

    # (d)
    def train(self, selection, matching, callbacks=()) -> tuple[int, dict[str, Any], bool, Any]:
        """Train (resuming from a checkpoint), or load the adapter of a finished run with the same
        pairs and settings. Returns the global step, the train metrics, whether it trained now and
        the trainer (None when it did not)."""
        from selfrec_ft.prompts.chat import chat_format
        from selfrec_ft.prompts.protocol import training_protocol
        from selfrec_ft.training import manifest as mf
        from selfrec_ft.training.hook import hook_from_args
        from selfrec_ft.training.lifecycle import resolve_resume, start_run, train_and_finish

        a, t, out = self.dpo_args, self.training_args, self.out
        pairs_sha = mf.sha256_rows(selection.dataset, columns=TRL_COLUMNS)
        fingerprint = training_fingerprint(pairs_sha, a, t, self.model_args)
        old = mf.read_manifest(out)
        if old is not None and old.get("fingerprint") not in (None, fingerprint):
            raise UserError("this output directory holds a DPO run on other pairs or with other training settings; "
                            "use another output_dir", out / mf.MANIFEST_FILE)
        if old is not None and old.get("status") == "done" and (out / "adapter_config.json").is_file():
            logger.info("training already done in %s; loading its adapter", out)
            self.model = attach_trained_adapter(self.model, out)
            return int(old.get("global_step", 0)), dict(old.get("train_metrics") or {}), False, None

        if self.hook_args is not None and (self.hook_args.hook_in_domain or self.hook_args.hook_out_of_domain):
            if not a.self_source:
                raise UserError("the evaluation hook scores the corpus's own summaries of the evaluator: set "
                                "self_source")
        trainer = build_dpo_trainer(self.model, self.tokenizer, selection.dataset, t, self.model_args, callbacks)
        hook_from_args(trainer, self.hook_args, a)  # built with its trainer, added to it
        chat = chat_format(self.tokenizer)  # the end-of-turn token ends a completion too (Gemma's <end_of_turn>)
        seq = check_dpo_sequences(trainer.train_dataset, t.max_length,
                                  {self.tokenizer.eos_token_id, *chat.end_of_turn})
        resume = resolve_resume(t)
        manifest = {
            "status": "training", "created": mf.now_iso(), "mode": self.mode,
            "model": self.model_args.model_name_or_path, "sft_adapter": a.sft_adapter, "attribute": self.prop.name,
            "prompt_preset": a.prompt_preset, "protocol": training_protocol(a.prompt_preset),
            "direction": a.direction, "pairs": matching["n_pairs"],
            "train_article_ids": list(dict.fromkeys(selection.dataset["article_id"])),
            "training_data_sha256": pairs_sha, "fingerprint": fingerprint,
            "sequence_tokens": {"max": max(seq.lengths), "mean": sum(seq.lengths) / len(seq.lengths)},
            "completion_tokens": {"chosen_mean": sum(seq.chosen_tokens) / len(seq.chosen_tokens),
                                  "rejected_mean": sum(seq.rejected_tokens) / len(seq.rejected_tokens)},
            "completions_ending_with_eos": seq.ends_with_eos,
            "chat_template": chat.record(),
            "reference": ("the base with the adapter disabled (PEFT); no ref_model" if a.sft_adapter is None
                          else "a frozen copy ('ref') of the SFT adapter; no ref_model"),
            "demo_refs": self.demo_refs,
            "precision": {"bf16": bool(t.bf16), "fp16": bool(t.fp16), "dtype": self.model_args.dtype,
                          "note": self.precision_note},
            "num_processes": trainer.accelerator.num_processes, "resumed_from": resume,
            "library_versions": mf.library_versions(),
        }
        start_run(out, manifest, (a, t, self.model_args, self.hook_args), self.state)
        logger.info("DPO training on %d pairs", matching["n_pairs"])
        step, metrics, _ = train_and_finish(trainer, out, manifest, resume, self.state)
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
                "max_new_tokens": a.max_new_tokens, "generation_max_length": self.gen.max_length,
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
    from selfrec_ft.training.lifecycle import cpu_precision
    from selfrec_ft.training.shift import render_shift_markdown
    from selfrec_ft.training.teardown import release
    from selfrec_ft.training.threads import use_cpu_cores

    run = trainer = accelerator = None
    try:
        use_cpu_cores(training_args)
        _check_args(dpo_args, training_args, hook_args)
        prop = resolve_attribute(dpo_args.attribute)
        check_layout(training_args)
        demo_refs = _resolve_demo(dpo_args, model_args, hook_args, training_args)
        precision_note = cpu_precision(training_args, model_args.dtype)
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
