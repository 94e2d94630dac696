"""Supervised fine-tuning of the evaluator's self-recognition with TRL's ``SFTTrainer``.

:func:`run_sft` builds the pairwise training examples with :mod:`selfrec_ft.pairs` (TRL's
conversational prompt-completion format), checks that no example would be truncated or dropped,
trains — LoRA (``use_peft``), QLoRA (``use_peft`` + ``load_in_4bit``) or all parameters — with the loss
on the completion only, resumes from the last checkpoint in ``output_dir``, and saves the adapter (or
model), the tokenizer, ``resolved_config.yaml`` and ``training_manifest.json``.

The completion is what the chat template renders for the assistant's answer; for Llama-2 that is
``▁``, the digit, ``▁`` and ``</s>``: the loss is on those tokens and on nothing of the prompt
(:func:`check_sequences` proves that the answer alone is there; :func:`verify_completion_mask` that
the prepared labels are exactly those tokens).

:func:`prepare_sft` stops before training and returns the trainer, for callers (and tests) that want
to inspect it; :func:`run_sft` is prepare + train + save + teardown.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfrec_ft.errors import UserError
from selfrec_ft.training.lifecycle import (  # noqa: F401 (re-exported)
    RESUME_AUTO,
    RESUME_OFF,
    resolve_resume,
    training_mode,
)

logger = logging.getLogger(__name__)


@dataclass
class SequenceCheck:
    """Token-level facts about the training rows, computed as TRL tokenizes them."""

    lengths: list[int]                  # prompt + completion tokens per row
    prompt_lengths: list[int]           # tokens before the completion per row
    completion_ids: list[list[int]]     # the tokens the loss is on, per row
    completion_tokens: dict[str, list[str]]  # completion content -> its token pieces
    prompt_not_prefix: int = 0          # rows whose prompt tokens are not a prefix of prompt+completion
    end_of_turn: list[str] = field(default_factory=list)  # the template's end-of-turn tokens, in every completion

    def too_long(self, max_length: int | None) -> list[int]:
        return [] if max_length is None else [i for i, n in enumerate(self.lengths) if n > max_length]


@dataclass
class SFTSetup:
    """Everything :func:`run_sft` trains with; ``trainer`` is a ready ``trl.SFTTrainer``."""

    trainer: Any
    dataset: Any                        # the pairs (datasets.Dataset, prompt/completion + metadata)
    stats: Any                          # selfrec_ft.pairs.build.PairsStats
    sequences: SequenceCheck
    mode: str                           # "lora" | "qlora" | "full"
    corpus_files: list[Path]
    prompt_max_length: int | None
    demo_refs: dict[str, dict[str, str]] = field(default_factory=dict)
    precision_note: str | None = None
    shared_prefix: dict[str, int] | None = None  # share_prefix: rows and tokens trained vs unshared


@dataclass
class SFTResult:
    output_dir: Path
    mode: str
    global_step: int
    metrics: dict[str, Any]
    stats: Any
    manifest: dict[str, Any]
    resumed_from: str | None
    is_main_process: bool = True
    report: dict[str, Any] | None = None  # the training report (report.json) when the hook ran

    def summary(self) -> str:
        """What the run did, then the result table (baseline -> every checkpoint -> final, both
        domains, recognition and preference with 95% CIs) and the paths of report.md and the plot."""
        from selfrec_ft.training.report import render_training_console

        s = self.stats
        what = "adapter" if self.mode in ("lora", "qlora") else "model"
        lines = [
            f"trained ({self.mode}) on {s.rows} examples from {s.articles} articles "
            f"(labels {s.labels}, per other source {s.by_source}, shortened {s.shortened}"
            + (f", {s.ties_dropped} rows tied on the {self.manifest.get('label_strategy')} property dropped"
               if s.ties_dropped else f", {s.ties} tied rows labelled 1" if s.ties else "") + ")",
            f"global step {self.global_step}" + (f", resumed from {self.resumed_from}" if self.resumed_from else "")
            + (f", train loss {self.metrics['train_loss']:.4f}" if "train_loss" in self.metrics else ""),
            f"{what}, tokenizer, resolved_config.yaml and training_manifest.json in {self.output_dir}",
        ]
        if self.report:
            lines += ["", render_training_console(self.report, self.output_dir)]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# data


def load_training_corpus(data_args):
    """The corpus named by ``data_args`` and the files it came from (for the manifest hashes)."""
    from selfrec_ft.data.corpus import ARTICLES_FILE, SUMMARIES_FILE, load_corpus, load_hf_corpus
    from selfrec_ft.jsonl import iter_jsonl

    files: list[Path] = []
    if data_args.hf_dataset and data_args.corpus:
        raise UserError("set either corpus (a directory) or hf_dataset (a hub dataset), not both")
    if data_args.hf_dataset:
        corpus = load_hf_corpus(data_args.hf_dataset, data_args.hf_config, data_args.hf_split,
                                document_column=data_args.document_column,
                                summary_column=data_args.summary_column, id_column=data_args.id_column)
    elif data_args.corpus:
        corpus = load_corpus(data_args.corpus)
        files += [p for p in (corpus.path / ARTICLES_FILE, corpus.path / SUMMARIES_FILE) if p.is_file()]
    else:
        raise UserError("no training data: set corpus (a corpus directory, or demo://short) or hf_dataset")
    if data_args.self_summaries:
        path = Path(data_args.self_summaries)
        added: dict[str, dict[str, str]] = {}
        for lineno, obj in iter_jsonl(path, {"id": (str, int), "source": str, "summary": str}):
            aid, src = str(obj["id"]), obj["source"]
            if not corpus.has_article(aid):
                raise UserError(f'summary for unknown article id "{aid}"', path, lineno)
            if aid in added.get(src, {}):
                raise UserError(f'duplicate summary for id "{aid}" and source "{src}"', path, lineno)
            have = corpus.summary(aid, src)
            if have is not None and have != obj["summary"]:
                raise UserError(f'the corpus already has a different "{src}" summary for id "{aid}"', path, lineno)
            added.setdefault(src, {})[aid] = obj["summary"]
        for src, by_id in added.items():
            corpus.add_summaries(src, by_id)
        files.append(path)
    return corpus, files


def _chat_ids(tokenizer, conversations: list, add_generation_prompt: bool) -> list[list[int]]:
    """Token ids of conversations exactly as TRL tokenizes them (``apply_chat_template``, tokenize=True)."""
    out = tokenizer.apply_chat_template(conversations, tokenize=True, return_dict=True,
                                        add_generation_prompt=add_generation_prompt)
    return [list(ids) for ids in out["input_ids"]]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def check_sequences(dataset, tokenizer, batch_size: int = 128) -> SequenceCheck:
    """Tokenize every row as TRL will and check that the completion tokens carry the answer alone.

    The completion starts where the tokenized prompt (generation prompt on) and prompt+completion
    diverge (TRL's rule). Its text, special tokens dropped, must be the completion's content: a chat
    template that moved answer text into the prompt or prompt text into the answer is an error. The
    prompts must be as the chat template takes them (a system turn folded for a template without one,
    :func:`~selfrec_ft.prompts.chat.chat_messages`), and when the template ends an assistant turn with
    a special token (``</s>``, ``<|eot_id|>``, ``<|im_end|>``, ``<end_of_turn>``) every completion
    must hold it after the answer: the loss teaches the model to end its turn where generation stops.
    """
    from selfrec_ft.prompts.chat import chat_format

    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    fmt = chat_format(tokenizer)
    end_of_turn = set(fmt.end_of_turn)
    lengths, prompt_lengths, completions = [], [], []
    pieces: dict[str, list[str]] = {}
    not_prefix = 0
    prompts, comps = dataset["prompt"], dataset["completion"]
    for start in range(0, len(prompts), batch_size):
        p_batch = prompts[start:start + batch_size]
        c_batch = comps[start:start + batch_size]
        for i, p in enumerate(p_batch):
            if fmt.messages(p) != p:
                raise UserError(f"tokenizer {name!r}: training row {start + i} has a system message, which this "
                                f"chat template cannot take ({fmt.reason}); build the rows with the tokenizer "
                                "(selfrec_ft.pairs.build.build_pairwise_dataset(..., tokenizer=...)) to fold it")
        p_ids = _chat_ids(tokenizer, p_batch, True)
        full_ids = _chat_ids(tokenizer, [p + c for p, c in zip(p_batch, c_batch)], False)
        for p, full, comp in zip(p_ids, full_ids, c_batch):
            n = _common_prefix(p, full)
            not_prefix += n < len(p)
            answer = "".join(m["content"] for m in comp)
            text = tokenizer.decode(full[n:], skip_special_tokens=True).strip()
            if text != answer.strip():
                raise UserError(
                    f"tokenizer {name!r}: the chat template renders the answer {answer!r} as the tokens "
                    f"{tokenizer.convert_ids_to_tokens(full[n:])} (text {text!r}); the loss would not be on the "
                    "answer alone")
            if end_of_turn and not end_of_turn.intersection(full[n:]):
                raise UserError(
                    f"tokenizer {name!r}: the completion tokens {tokenizer.convert_ids_to_tokens(full[n:])} of the "
                    f"answer {answer!r} lack the template's end-of-turn token {list(fmt.end_of_turn_tokens)}; the "
                    "model would not learn to end its answer")
            lengths.append(len(full))
            prompt_lengths.append(n)
            completions.append(full[n:])
            pieces.setdefault(answer, tokenizer.convert_ids_to_tokens(full[n:]))
    if not_prefix:
        logger.warning("%d training prompts do not tokenize as a prefix of prompt+completion; the model is trained "
                       "on a slightly different context than it is scored on", not_prefix)
    return SequenceCheck(lengths, prompt_lengths, completions, dict(sorted(pieces.items())), not_prefix,
                         list(fmt.end_of_turn_tokens))


def _template_name(data_args) -> str:
    # mirrors selfrec_ft.pairs.build.build_pairwise_dataset's choice of question
    from selfrec_ft.pairs.labels import CONTROL_QUESTIONS

    if data_args.question == "own":
        return CONTROL_QUESTIONS.get(data_args.labels, "pairwise-recognition")
    return "pairwise-recognition"


def answer_margin(tokenizer, data_args) -> int:
    """Training tokens (prompt + completion) minus the tokens the article shortening bounds
    (scoring prompt + answer token); constant for a template: ``▁ </s>`` = 2 for Llama-2."""
    from selfrec_ft.prompts.answer_slots import resolve_answer_slot
    from selfrec_ft.prompts.chat import chat_messages
    from selfrec_ft.prompts.templates import load_preset

    template = load_preset(data_args.prompt_preset).task(_template_name(data_args))
    messages = chat_messages(tokenizer, template.messages(**{f: "x" for f in template.fields}))
    slot = resolve_answer_slot(tokenizer, messages, template.options, template.assistant_prefix)
    completion = [{"role": "assistant", "content": template.train_assistant_prefix + template.options[0]}]
    full = _chat_ids(tokenizer, [messages + completion], False)[0]
    return len(full) - (len(slot.prompt_ids) + 1)


def build_training_pairs(data_args, tokenizer, prompt_max_length: int | None):
    """The pairs dataset, its stats and the corpus files read."""
    from selfrec_ft.pairs.build import build_pairwise_dataset

    if not data_args.self_source:
        raise UserError("self_source is not set: name the evaluator's own summaries (a source in summaries.jsonl)")
    corpus, files = load_training_corpus(data_args)
    dataset, stats = build_pairwise_dataset(
        corpus, data_args.self_source, others=data_args.others, n_articles=data_args.n_articles,
        labels=data_args.labels, flip_fraction=data_args.flip_fraction, seed=data_args.label_seed,
        preset=data_args.prompt_preset, question=data_args.question,
        tokenizer=tokenizer, max_length=prompt_max_length,  # the tokenizer folds a system turn where needed
        label_ties=data_args.label_ties,
    )
    if stats.rows == 0:
        raise UserError(f"no training examples: none of the first {data_args.n_articles} articles has both a "
                        f"{data_args.self_source!r} summary and an other source's summary")
    return dataset, stats, files


# --------------------------------------------------------------------------------------------------
# model and trainer


def effective_prompt_max_length(data_args, training_args, tokenizer) -> int | None:
    if data_args.prompt_max_length is not None:
        return data_args.prompt_max_length
    if training_args.max_length is None:
        return None
    return training_args.max_length - answer_margin(tokenizer, data_args)


def verify_completion_mask(prepared, expected_completion_ids: list[list[int]]) -> None:
    """The prepared labels of every row are ``-100`` on the prompt and equal to the input ids on the
    completion, and the completions are exactly the expected ones (as a multiset: TRL may shuffle)."""
    got = []
    for ids, labels in zip(prepared["input_ids"], prepared["labels"]):
        first = next((j for j, t in enumerate(labels) if t != -100), len(labels))  # -100 before `first`
        if first == len(labels) or list(labels[first:]) != list(ids[first:]):
            raise RuntimeError("the prepared training labels are not a completion-only mask")
        got.append(tuple(labels[first:]))
    if Counter(got) != Counter(tuple(c) for c in expected_completion_ids):
        raise RuntimeError("the prepared training labels differ from the completion tokens of the pairs")


def prepare_sft(data_args, training_args, model_args, callbacks=(), hook_args=None) -> SFTSetup:
    """Build the pairs, check them, load the model and return a ready ``SFTTrainer`` (no training)."""
    from trl import SFTTrainer, get_peft_config

    from selfrec_ft.models.loading import absolute_if_local, load_model_for_training, load_tokenizer
    from selfrec_ft.training.demo_assets import resolve_demo_refs
    from selfrec_ft.training.hook import hook_from_args
    from selfrec_ft.training.args import check_values
    from selfrec_ft.training.lifecycle import check_output_dir, cpu_precision

    check_values(data_args, training_args, hook_args)
    check_output_dir(training_args)
    mode = training_mode(model_args)
    demo_refs = resolve_demo_refs(data_args, model_args, hook_args,
                                  main_process_first=lambda: training_args.main_process_first(desc="demo assets"))
    if not model_args.model_name_or_path:
        raise UserError("model_name_or_path is not set")
    model_args.model_name_or_path = absolute_if_local(model_args.model_name_or_path)
    if training_args.packing:
        raise UserError("packing: true merges training examples into blocks; set packing: false")
    if training_args.completion_only_loss is False:
        raise UserError("completion_only_loss: false would train on the prompt; the loss must be on the answer only")
    if data_args.share_prefix:
        if training_args.padding_free:
            raise UserError("share_prefix and padding_free both change the row layout; set padding_free: false")
        if "flash" in str(model_args.attn_implementation or ""):
            raise UserError(f"share_prefix needs a custom attention mask, which attn_implementation: "
                            f"{model_args.attn_implementation} cannot take; use sdpa or eager")
    precision_note = cpu_precision(training_args, model_args.dtype)

    tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=training_args.trust_remote_code)
    prompt_max = effective_prompt_max_length(data_args, training_args, tokenizer)
    dataset, stats, files = build_training_pairs(data_args, tokenizer, prompt_max)
    seq = check_sequences(dataset, tokenizer)
    too_long = seq.too_long(training_args.max_length)
    if too_long:
        raise UserError(
            f"{len(too_long)} of {stats.rows} training examples are longer than max_length="
            f"{training_args.max_length} tokens (longest {max(seq.lengths)}); TRL would truncate them and drop "
            f"their answers. Raise max_length or lower prompt_max_length (articles are shortened to fit)")

    model = load_model_for_training(model_args, training_args)
    trainer_cls, collator = SFTTrainer, None
    if data_args.share_prefix:
        from selfrec_ft.training.shared_prefix import SharedPrefixCollator, shared_prefix_trainer_class

        trainer_cls, collator = shared_prefix_trainer_class(), SharedPrefixCollator(tokenizer.pad_token_id)
    trainer = trainer_cls(model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=get_peft_config(model_args), callbacks=list(callbacks), data_collator=collator)
    hook_from_args(trainer, hook_args, data_args, prompt_max)  # built with its trainer, added to it
    prepared, shared = trainer.train_dataset, None
    kept = sum(prepared["n_examples"]) if data_args.share_prefix else len(prepared)
    if kept != stats.rows:
        raise UserError(f"the trainer kept {kept} of {stats.rows} training examples")
    if data_args.share_prefix:
        from selfrec_ft.training.shared_prefix import verify_packed_completion_mask

        verify_packed_completion_mask(prepared, seq.completion_ids)
        shared = {"rows": len(prepared), "examples": kept, "tokens": sum(len(r) for r in prepared["input_ids"]),
                  "tokens_unshared": sum(seq.lengths)}
    else:
        verify_completion_mask(prepared, seq.completion_ids)
    return SFTSetup(trainer, dataset, stats, seq, mode, files, prompt_max, demo_refs, precision_note, shared)


# --------------------------------------------------------------------------------------------------
# run


def build_manifest(setup: SFTSetup, data_args, training_args, model_args, resumed_from: str | None,
                   num_processes: int) -> dict[str, Any]:
    from selfrec_ft.prompts.protocol import training_protocol
    from selfrec_ft.training import manifest as mf

    ds, stats, seq = setup.dataset, setup.stats, setup.sequences
    return {
        "status": "training",
        "created": mf.now_iso(),
        "mode": setup.mode,
        "model": model_args.model_name_or_path,
        "self_source": data_args.self_source,
        "others": sorted(set(ds["other_source"]), key=list(ds["other_source"]).index),
        "label_strategy": data_args.labels,
        "flip_fraction": data_args.flip_fraction,
        "question": data_args.question,
        "prompt_preset": data_args.prompt_preset,
        "protocol": training_protocol(data_args.prompt_preset, _template_name(data_args)),
        "rows": stats.rows,
        "articles": stats.articles,
        "train_article_ids": list(dict.fromkeys(ds["article_id"])),
        "labels": stats.labels,
        "by_source": stats.by_source,
        "by_source_and_label": mf.count_table(ds),
        "skipped_missing": stats.skipped_missing,
        "label_ties": {"policy": stats.label_ties, "tied_rows": stats.ties, "dropped": stats.ties_dropped},
        "shortened": stats.shortened,
        "prompt_max_length": setup.prompt_max_length,
        "max_length": training_args.max_length,
        "sequence_tokens": {"max": max(seq.lengths), "mean": sum(seq.lengths) / len(seq.lengths),
                            "min": min(seq.lengths)},
        "completion_tokens": seq.completion_tokens,
        "chat_template": stats.chat,  # system role native or folded (and why), end-of-turn tokens
        "prompt_not_prefix": seq.prompt_not_prefix,
        "share_prefix": setup.shared_prefix,
        "seeds": {"label_seed": data_args.label_seed, "seed": training_args.seed,
                  "data_seed": training_args.data_seed},
        "corpus_files": {str(Path(p).resolve()): mf.sha256_file(p) for p in setup.corpus_files},
        "hf_dataset": ({"name": data_args.hf_dataset, "config": data_args.hf_config, "split": data_args.hf_split}
                       if data_args.hf_dataset else None),
        "training_data_sha256": mf.sha256_rows(ds),
        "demo_refs": setup.demo_refs,
        "precision": {"bf16": bool(training_args.bf16), "fp16": bool(training_args.fp16),
                      "dtype": model_args.dtype, "note": setup.precision_note},
        "num_processes": num_processes,
        "resumed_from": resumed_from,
        "library_versions": mf.library_versions(),
    }


def run_sft(data_args, training_args, model_args, callbacks=(), hook_args=None, *, teardown: bool = True
            ) -> SFTResult:
    """Train, save and tear down; see the module docstring.

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (e.g. an evaluation hook);
    ``hook_args`` (:class:`~selfrec_ft.training.args.EvalHookArguments`) is recorded in the resolved
    config. With ``teardown`` (default) the distributed process group is destroyed at the end (after
    the trainer is freed): call it last in a script.
    """
    from accelerate import PartialState

    from selfrec_ft.training import manifest as mf
    from selfrec_ft.training.lifecycle import start_run, train_and_finish
    from selfrec_ft.training.teardown import release
    from selfrec_ft.training.threads import use_cpu_cores

    setup = trainer = accelerator = None
    out = Path(training_args.output_dir)
    try:
        use_cpu_cores(training_args)
        setup = prepare_sft(data_args, training_args, model_args, callbacks, hook_args)
        trainer, setup.trainer = setup.trainer, None
        accelerator = trainer.accelerator
        state = PartialState()
        resume = resolve_resume(training_args)
        manifest = build_manifest(setup, data_args, training_args, model_args, resume, accelerator.num_processes)
        old = mf.read_manifest(out)
        if resume and old and old.get("training_data_sha256") not in (None, manifest["training_data_sha256"]):
            raise UserError("this output directory holds checkpoints trained on different data; use another "
                            "output_dir or set resume_from_checkpoint: false", out)
        start_run(out, manifest, (data_args, training_args, model_args, hook_args), state)
        global_step, metrics, report = train_and_finish(trainer, out, manifest, resume, state)
        is_main = state.is_main_process
    finally:
        # Free the trainer (model, optimizer, dataloaders) before destroying the process group:
        # a gloo/NCCL group torn down under live DDP buckets can hang the exit.
        trainer = None
        if setup is not None:
            setup.trainer = None
        release(accelerator, teardown)
    return SFTResult(out, setup.mode, global_step, metrics, setup.stats, manifest, resume, is_main_process=is_main,
                     report=report)
