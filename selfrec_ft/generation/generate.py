"""Batched, resumable summary generation by the evaluator itself.

:func:`generate_summaries` renders each article through the preset's ``generate-<domain>`` template
and the model's chat template (article shortened to fit ``max_length - max_new_tokens``), generates
in batches of similar prompt length with left padding, cleans the text (:mod:`.clean`) and appends
``{"id", "source", "summary"}`` rows (plus ``"candidate": k`` when sampling) as each batch finishes.

Resuming: rows already in the output file are read first and their keys ``(id, source, candidate)``
skipped (a row without ``candidate`` counts as candidate 0; greedy generation wants candidate 0
only). A kill loses at most the batch in flight.

Failures: a generation that is empty after cleaning is not written. It is counted, logged with its
raw text to ``<output stem>.failures.jsonl`` next to the output, and, being still missing, tried
again by the next run (greedy decoding will fail the same way again: the log says why).

Sampling is reproducible per candidate: candidate ``k`` of article ``a`` draws its tokens from its
own ``torch.Generator`` seeded by :func:`candidate_seed` (``seed``, ``a``, ``k``), so what it
produces does not depend on the batch it lands in, on the batch size, on the number of candidates
asked for, or on which candidates a resumed run still had to make. (In float32 the padding of a
batch changes the logits by rounding error only; on GPU in bfloat16, batch composition can change
the numerics and hence, rarely, a sample.) Temperature and nucleus (top-p) filtering are the only
transformations; the model's own sampling defaults (top-k, ...) are not applied.

``backend="vllm"`` runs the same prompts (same token ids) through vLLM, if it is installed; sampled
candidates then use vLLM's per-request seed and differ from the Hugging Face backend's.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from selfrec_ft.data.corpus import SUMMARIES_FILE, Corpus, load_corpus
from selfrec_ft.errors import UserError
from selfrec_ft.generation.clean import DOMAINS, clean_summary
from selfrec_ft.jsonl import JsonlAppender, read_jsonl_rows, repair_tail
from selfrec_ft.prompts.chat import chat_format
from selfrec_ft.prompts.templates import DEFAULT_PRESET, load_preset, render_generation_prompt

CANDIDATES_FILE = "candidates.jsonl"
from selfrec_ft.defaults import GENERATION_BACKENDS as BACKENDS  # noqa: E402
VLLM_INSTALL_HINT = "the vllm backend needs vLLM, which is not installed: pip install vllm (CUDA GPU only)"


@dataclass
class GenerationResult:
    out_path: Path
    failures_path: Path
    generated: int = 0  # rows written by this run
    skipped_existing: int = 0  # (id, source, candidate) keys already in the output
    cleaned: int = 0  # written rows whose text cleaning changed (beyond surrounding whitespace)
    failures: int = 0  # empty after cleaning: logged, not written, retried next run
    shortened: int = 0  # prompts whose article was cut to fit
    new_tokens: int = 0  # generated tokens, up to and including EOS
    seconds: float = 0.0  # wall time of the generation loop (model calls, decoding, writing)
    chat: dict[str, Any] | None = None  # the tokenizer's chat format (system role native/folded, end of turn)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"out": str(self.out_path), "generated": self.generated,
                "skipped_existing": self.skipped_existing, "cleaned": self.cleaned,
                "failures": self.failures, "shortened": self.shortened, "new_tokens": self.new_tokens,
                "seconds": round(self.seconds, 3), "tokens_per_s": round(self.tokens_per_s, 2),
                "chat_template": self.chat}

    def format(self) -> str:
        return (f"generated {self.generated} summaries ({self.skipped_existing} already present) -> "
                f"{self.out_path}\ncleaned: {self.cleaned}; failures (empty after cleaning, not written): "
                f"{self.failures}" + (f" -> {self.failures_path}" if self.failures else "")
                + f"; shortened articles: {self.shortened}\n{self.new_tokens} new tokens in "
                f"{self.seconds:.1f} s = {self.tokens_per_s:.1f} tokens/s"
                + (f"\nthe chat template has no system role: the system prompt was folded into the user turn "
                   f"({self.chat['reason']})" if self.chat and self.chat["system_role"] == "folded" else ""))


def candidate_seed(seed: int, article_id: str, candidate: int) -> int:
    """A stable 63-bit seed for one (article, candidate), independent of run order and hashing salt."""
    digest = hashlib.sha256(f"{seed}\x00{article_id}\x00{candidate}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def stop_ids(generation_config, tokenizer) -> set[int]:
    """Every id that ends a generation: each id of the model's ``generation_config.eos_token_id`` (an
    id or a list: Llama-3 ships ``<|end_of_text|>``, ``<|eom_id|>`` and ``<|eot_id|>``), the
    tokenizer's EOS and the special tokens the chat template ends an assistant turn with
    (:func:`~selfrec_ft.prompts.chat.chat_format`: ``<|eot_id|>``, ``<|im_end|>``, ``<end_of_turn>``),
    so a model whose generation config lists only its EOS still stops where its answers end."""
    eos = getattr(generation_config, "eos_token_id", None)
    ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    ids.add(tokenizer.eos_token_id)
    if getattr(tokenizer, "chat_template", None):
        ids.update(chat_format(tokenizer).end_of_turn)
    ids.discard(None)
    if not ids:
        raise UserError(f"tokenizer {tokenizer.name_or_path!r} has no EOS token; generation cannot stop")
    return {int(i) for i in ids}


def trim_at_eos(ids: Sequence[int], eos: set[int]) -> tuple[list[int], int]:
    """Tokens before the first EOS, and the number of tokens generated (EOS included)."""
    for i, t in enumerate(ids):
        if t in eos:
            return list(ids[:i]), i + 1
    return list(ids), len(ids)


def _seeded_sampler(seeds: Sequence[int], temperature: float, top_p: float):
    """A logits processor that samples each row from its own generator and returns one-hot scores,
    so that greedy selection inside ``generate`` picks exactly the sampled token."""
    import torch
    from transformers import LogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

    class SeededSampler(LogitsProcessor):
        def __init__(self):
            self.generators = None
            self.warpers = [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])

        def __call__(self, input_ids, scores):
            if self.generators is None:
                self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in seeds]
            for warp in self.warpers:
                scores = warp(input_ids, scores)
            probs = torch.softmax(scores.float(), dim=-1)
            picks = torch.stack([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)])
            out = torch.full_like(scores, float("-inf"))
            out.scatter_(1, picks, 0.0)
            return out

    return SeededSampler()


class HFGenerator:
    """Batched generation with a loaded ``transformers`` model (plain, PEFT-wrapped or merged)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.eos = stop_ids(getattr(model, "generation_config", None), tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos)

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, seeds: Sequence[int] | None = None,
                 temperature: float = 1.0, top_p: float = 1.0) -> tuple[list[list[int]], int]:
        """New token ids (cut before EOS) for each prompt, and the number of tokens generated.

        Prompts are left-padded into one batch; the attention mask marks the padding and
        ``generate`` derives position ids from it, so each row decodes as it would alone. With
        ``seeds`` (one per prompt) rows are sampled, else greedy.
        """
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=sorted(self.eos),
            pad_token_id=self.pad_id, repetition_penalty=1.0, no_repeat_ngram_size=0,
        )
        processors = LogitsProcessorList()
        if seeds is not None:
            processors.append(_seeded_sampler(seeds, temperature, top_p))
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                      generation_config=config, logits_processor=processors)
        results, n_new = [], 0
        for row in out[:, width:].tolist():
            kept, n = trim_at_eos(row, self.eos)
            results.append(kept)
            n_new += n
        return results, n_new


def _generation_config(path: str):
    """The model directory's generation config (None when it has none)."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path)
    except (OSError, ValueError):
        return None


class VLLMGenerator:
    """The same interface on vLLM (``LLM`` + ``SamplingParams``; a LoRA adapter via ``LoRARequest``)."""

    def __init__(self, path: str | os.PathLike, tokenizer, dtype: str | None = None, max_length: int | None = None):
        try:
            import vllm
            from vllm.lora.request import LoRARequest
        except ImportError:
            raise UserError(VLLM_INSTALL_HINT) from None
        from selfrec_ft.models.loading import adapter_base, is_adapter_dir

        path = str(path)
        self.vllm, self.tokenizer = vllm, tokenizer
        self.eos = stop_ids(_generation_config(adapter_base(path) if is_adapter_dir(path) else path), tokenizer)
        kwargs: dict[str, Any] = {"dtype": dtype or "auto", "max_model_len": max_length}
        self.lora = None
        if is_adapter_dir(path):
            rank = int(json.loads((Path(path) / "adapter_config.json").read_text()).get("r", 16))
            supported = (8, 16, 32, 64, 128, 256, 512)  # vLLM's allowed max_lora_rank values
            kwargs.update(enable_lora=True, max_lora_rank=next((r for r in supported if r >= rank), rank))
            self.lora = LoRARequest("adapter", 1, path)
            path = adapter_base(path)
        self.llm = vllm.LLM(model=path, **{k: v for k, v in kwargs.items() if v is not None})

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, seeds: Sequence[int] | None = None,
                 temperature: float = 1.0, top_p: float = 1.0) -> tuple[list[list[int]], int]:
        stop = sorted(self.eos)  # every end id, as the Hugging Face backend stops
        if seeds is None:
            params = [self.vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens,
                                               stop_token_ids=stop)] * len(prompts)
        else:
            params = [self.vllm.SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                               seed=s, stop_token_ids=stop) for s in seeds]
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params,
                                    lora_request=self.lora, use_tqdm=False)
        results, n_new = [], 0
        for o in outputs:
            kept, n = trim_at_eos(list(o.outputs[0].token_ids), self.eos)
            results.append(kept)
            n_new += n
        return results, n_new


def _existing_keys(path: Path) -> set[tuple[str, str, int]]:
    keys = set()
    for i, row in enumerate(read_jsonl_rows(path), start=1):
        candidate = row.get("candidate", 0)
        if "id" not in row or "source" not in row or not isinstance(candidate, int):
            raise UserError('rows need "id", "source" and an integer "candidate" if any', path, i)
        keys.add((str(row["id"]), str(row["source"]), candidate))
    return keys


def _check_params(max_new_tokens, batch_size, limit, sample, temperature, top_p, num_return_sequences,
                  domain, backend) -> None:
    if domain not in DOMAINS:
        raise UserError(f"unknown domain {domain!r}; use one of {', '.join(DOMAINS)}")
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size),
                        ("num_return_sequences", num_return_sequences)):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    if limit is not None and limit < 0:
        raise UserError(f"limit must not be negative, got {limit}")
    if sample:
        if not temperature > 0:
            raise UserError(f"temperature must be positive, got {temperature}")
        if not 0 < top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {top_p}")
    elif num_return_sequences != 1:
        raise UserError("several candidates per article need sampling (--sample)")


def generate_summaries(
    model_or_path: str | os.PathLike | tuple[Any, Any],
    corpus_dir_or_corpus: str | os.PathLike | Corpus,
    source: str,
    *,
    prompt_preset: str = DEFAULT_PRESET,
    domain: str = "short",
    max_new_tokens: int = 100,
    batch_size: int = 8,
    limit: int | None = None,
    article_ids: Sequence[str] | None = None,
    max_length: int | None = None,
    sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    seed: int = 0,
    backend: str = "hf",
    dtype: str | None = None,
    device: str | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> GenerationResult:
    """Generate the missing summaries of ``source`` for a corpus and append them to ``out``.

    ``model_or_path``: a base model, LoRA adapter or checkpoint directory (loaded with
    :func:`selfrec_ft.models.loading.load_model`; ``dtype`` defaults to bfloat16 on CUDA, float32
    otherwise) or an already loaded ``(model, tokenizer)``. ``out`` defaults to the corpus's
    ``summaries.jsonl``, or ``candidates.jsonl`` when ``num_return_sequences > 1`` (several rows per
    (id, source) would make the summaries file unloadable). Articles: ``article_ids`` (default all,
    in corpus order), then the first ``limit`` of them. ``max_length`` (default: the model's
    context size) bounds prompt + ``max_new_tokens``; longer articles are shortened and counted.
    ``batch_size`` counts sequences (a candidate is one sequence).
    """
    _check_params(max_new_tokens, batch_size, limit, sample, temperature, top_p, num_return_sequences,
                  domain, backend)
    if isinstance(corpus_dir_or_corpus, Corpus):
        corpus = corpus_dir_or_corpus
    else:
        # before parsing: a last line cut short by a killed run is dropped, a whole one without its
        # newline (a hand-edited file) gets its newline
        repair_tail(Path(corpus_dir_or_corpus) / SUMMARIES_FILE)
        corpus = load_corpus(corpus_dir_or_corpus)
    if out is None:
        if corpus.path is None:
            raise UserError("the corpus was not loaded from a directory; give an output file")
        out_path = Path(corpus.path) / (SUMMARIES_FILE if num_return_sequences == 1 else CANDIDATES_FILE)
    else:
        out_path = Path(out)
        if (num_return_sequences > 1 and corpus.path is not None and out_path.name == SUMMARIES_FILE
                and out_path.resolve().parent == Path(corpus.path).resolve()):
            raise UserError(f"{num_return_sequences} candidates per article cannot go into the corpus's "
                            f"{SUMMARIES_FILE} (one summary per id and source); use another output file", out_path)
    failures_path = out_path.with_name(out_path.stem + ".failures.jsonl")
    result = GenerationResult(out_path=out_path, failures_path=failures_path)

    if article_ids is None:
        articles = list(corpus.articles)
    else:
        unknown = [a for a in article_ids if not corpus.has_article(a)]
        if unknown:
            raise UserError(f"unknown article id(s) {', '.join(map(str, unknown[:5]))}", corpus.path)
        articles = [corpus.article(a) for a in article_ids]
    if limit is not None:
        articles = articles[:limit]
    existing = _existing_keys(out_path)
    jobs = []  # (article, candidate)
    for art in articles:
        for k in range(num_return_sequences):
            if (art.id, source, k) in existing:
                result.skipped_existing += 1
            else:
                jobs.append((art, k))
    if not jobs:
        return result
    with JsonlAppender(out_path):  # an output that cannot be written fails now (one line), not after loading
        pass

    from selfrec_ft.models.loading import load_model, load_tokenizer

    if isinstance(model_or_path, (tuple, list)):
        if backend == "vllm":
            raise UserError("the vllm backend loads the model itself; give a model path, not a loaded model")
        model, tokenizer = model_or_path
        generator = HFGenerator(model, tokenizer)
    elif backend == "vllm":
        tokenizer = load_tokenizer(model_or_path)
        generator = VLLMGenerator(model_or_path, tokenizer, dtype=dtype, max_length=max_length)
    else:
        import torch

        use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        model, tokenizer = load_model(model_or_path, dtype=dtype or ("bfloat16" if use_cuda else "float32"),
                                      device=device)
        generator = HFGenerator(model, tokenizer)
    given = max_length is not None
    if max_length is None and backend == "hf":
        max_length = getattr(generator.model.config, "max_position_embeddings", None)
    result.chat = chat_format(tokenizer).record()
    template = load_preset(prompt_preset).task(f"generate-{domain}")
    prompt_budget = None if max_length is None else max_length - max_new_tokens
    if prompt_budget is not None:
        # the error names the value the user gave (or the model's context), not the prompt budget
        what = f"max_length {max_length}" + ("" if given else " (the model's context length)")
        need = len(render_generation_prompt(tokenizer, template, None, article="")[0])
        if prompt_budget < need:
            raise UserError(f"{what} leaves {max(prompt_budget, 0)} tokens for the prompt after max_new_tokens "
                            f"{max_new_tokens}, but the {template.name!r} prompt needs {need} even with an empty "
                            f"article: raise max_length to at least {need + max_new_tokens} or lower max_new_tokens")
    prompts: dict[str, list[int]] = {}
    for art in {a.id: a for a, _ in jobs}.values():
        prompts[art.id], shortened = render_generation_prompt(tokenizer, template, prompt_budget, article=art.text)
        result.shortened += shortened
    # longest first: a batch holds prompts of similar length (little padding) and memory errors show early
    jobs.sort(key=lambda job: -len(prompts[job[0].id]))

    start = time.perf_counter()
    bar = tqdm(total=len(jobs), desc=f"generating {source}", unit="summary", disable=not progress)
    writer, fail_log = JsonlAppender(out_path), JsonlAppender(failures_path)  # the log opens on a failure
    writer.open()
    try:
        for b in range(0, len(jobs), batch_size):
            batch = jobs[b:b + batch_size]
            seeds = [candidate_seed(seed, a.id, k) for a, k in batch] if sample else None
            new_ids, n_new = generator.generate([prompts[a.id] for a, _ in batch], max_new_tokens, seeds,
                                                temperature, top_p)
            result.new_tokens += n_new
            rows, failed = [], []
            for (art, k), ids in zip(batch, new_ids):
                raw = tokenizer.decode(ids, skip_special_tokens=True)
                text = clean_summary(raw, domain)
                key = {"id": art.id, "source": source, **({"candidate": k} if sample else {})}
                if not text:
                    failed.append({**key, "raw": raw, "reason": "empty after cleaning"})
                    continue
                result.cleaned += text != raw.strip()
                rows.append({**key, "summary": text})
            result.generated += writer.append(rows)
            result.failures += fail_log.append(failed)
            bar.update(len(batch))
    finally:
        bar.close()
        fail_log.close()
        writer.close()
    result.seconds = time.perf_counter() - start
    return result
