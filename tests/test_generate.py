"""Summary generation: resumability, batched == one-at-a-time greedy, cleaning, failures, sampling
candidates, adapters, CLI errors. Tiny random model: the text is token soup; token ids and row keys
are what is compared."""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter

import pytest
import torch

from selfrec_ft.data.corpus import load_corpus
from selfrec_ft.errors import UserError
from selfrec_ft.generation import clean_summary, generate_summaries
from selfrec_ft.generation import generate as gen_mod
from selfrec_ft.jsonl import read_jsonl_rows

MAX_NEW = 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a shared 2-core machine more threads mostly spin-wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from selfrec_ft.models.loading import load_model

    return load_model(tiny_model_dir, dtype="float32", device="cpu")


@pytest.fixture
def corpus_dir(short_corpus_dir, tmp_path):
    return shutil.copytree(short_corpus_dir, tmp_path / "corpus")


def _rows(path, source):
    return [r for r in read_jsonl_rows(path) if r["source"] == source]


def _by_key(rows):
    return {(r["id"], r.get("candidate")): r["summary"] for r in rows}


# --- (1) interrupted + resumed == uninterrupted ------------------------------------------------


def test_interrupted_run_resumes_to_the_same_rows(loaded, corpus_dir, tmp_path, monkeypatch):
    reference_dir = shutil.copytree(corpus_dir, tmp_path / "reference")
    full = generate_summaries(loaded, reference_dir, "self", max_new_tokens=MAX_NEW, batch_size=4, limit=10,
                              progress=False)
    assert full.generated + full.failures == 10
    expected = _by_key(_rows(reference_dir / "summaries.jsonl", "self"))

    class KilledAfterFirstBatch(gen_mod.JsonlAppender):
        calls = 0

        def append(self, rows):
            rows = list(rows)
            if self.path.name == "summaries.jsonl":
                KilledAfterFirstBatch.calls += 1
                if KilledAfterFirstBatch.calls == 2:
                    raise KeyboardInterrupt  # the kill arrives while the second batch is being written
            return super().append(rows)

    monkeypatch.setattr(gen_mod, "JsonlAppender", KilledAfterFirstBatch)
    with pytest.raises(KeyboardInterrupt):
        generate_summaries(loaded, corpus_dir, "self", max_new_tokens=MAX_NEW, batch_size=4, limit=10, progress=False)
    monkeypatch.undo()
    partial = _rows(corpus_dir / "summaries.jsonl", "self")
    assert 0 < len(partial) < len(expected)
    with open(corpus_dir / "summaries.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"id": "short-3-00009", "source": "self", "summ')  # a line cut short by a kill

    # resume with another batch size: other batch compositions, same greedy outputs
    resumed = generate_summaries(loaded, corpus_dir, "self", max_new_tokens=MAX_NEW, batch_size=3, limit=10,
                                 progress=False)
    rows = _rows(corpus_dir / "summaries.jsonl", "self")
    assert resumed.skipped_existing == len(partial)
    assert resumed.generated == len(expected) - len(partial)
    assert Counter((r["id"], r["source"]) for r in rows) == Counter((i, "self") for i, _ in expected)
    assert _by_key(rows) == expected
    load_corpus(corpus_dir)  # still a valid corpus: no duplicates, no partial line

    again = generate_summaries(loaded, corpus_dir, "self", max_new_tokens=MAX_NEW, batch_size=3, limit=10,
                               progress=False)
    assert (again.generated, again.skipped_existing) == (0, len(expected))


# --- (2) batched greedy == one prompt at a time -------------------------------------------------


def test_batched_greedy_equals_one_at_a_time(loaded, short_corpus_dir):
    from transformers import GenerationConfig

    from selfrec_ft.prompts.templates import load_preset, render_generation_prompt

    model, tokenizer = loaded
    template = load_preset("panickssery2024").task("generate-short")
    articles = load_corpus(short_corpus_dir).articles[:6]
    prompts = [render_generation_prompt(tokenizer, template, None, article=a.text)[0] for a in articles]
    assert len({len(p) for p in prompts}) > 1  # the batch really is padded

    gen = gen_mod.HFGenerator(model, tokenizer)
    batched, n_batched = gen.generate(prompts, 12)  # unsorted, one batch

    eos = tokenizer.eos_token_id
    config = GenerationConfig(max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    n_single = 0
    for prompt, got in zip(prompts, batched):
        with torch.inference_mode():
            out = model.generate(input_ids=torch.tensor([prompt]), generation_config=config)[0, len(prompt):].tolist()
        cut = out.index(eos) if eos in out else len(out)
        assert got == out[:cut]
        n_single += min(cut + 1, len(out))
    assert n_batched == n_single


# --- (3) cleaning ---------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, domain, expected", [
    ("Here is a summary:\nThe council approved the plan.", "short", "The council approved the plan."),
    ("Sure! Here's a one-sentence summary of the article:\n\nThe council approved the plan.", "short",
     "The council approved the plan."),
    ("Summary: Rovers won 3-1 on Sunday.", "short", "Rovers won 3-1 on Sunday."),
    ('"Rovers won 3-1 on Sunday."', "short", "Rovers won 3-1 on Sunday."),
    ("Certainly. Here is the summary you asked for:\n“Rovers won 3-1.”", "short", "Rovers won 3-1."),
    (" Rovers won 3-1\non Sunday. ", "short", "Rovers won 3-1 on Sunday."),
    ('"Great day," said the coach, "really."', "short", '"Great day," said the coach, "really."'),
    ("Here is why the vote failed: money.", "short", "Here is why the vote failed: money."),
    ("OK Energy will cut 300 jobs.", "short", "OK Energy will cut 300 jobs."),
    ("Summary:", "short", ""),
    ("Sure! Here is a summary:\n\n", "short", ""),
    ("Here are the highlights of the article:\n\n1. Rovers won 3-1\n2. 3.5 million fans watched\n"
     "3) Coach praises team", "highlights", "Rovers won 3-1\n3.5 million fans watched\nCoach praises team"),
    ("- Plan approved\n• Work starts soon\n* Critics object", "highlights",
     "Plan approved\nWork starts soon\nCritics object"),
    ("Highlight 1: Plan approved\nHighlight 2: \"Work starts soon\"\n\nHighlights:\n-5 degrees forecast",
     "highlights", "Plan approved\nWork starts soon\n-5 degrees forecast"),
    ("Highlights:\n\n", "highlights", ""),
])
def test_clean_summary(raw, domain, expected):
    assert clean_summary(raw, domain) == expected


# --- (4) empty generations are failures ----------------------------------------------------------


def test_empty_generations_are_counted_logged_and_not_written(tiny_model_dir, corpus_dir):
    from selfrec_ft.models.loading import load_model

    model, tokenizer = load_model(tiny_model_dir, dtype="float32", device="cpu")
    eos = tokenizer.eos_token_id

    def always_eos(module, args, output):
        output[..., eos] = 1e4
        return output

    model.lm_head.register_forward_hook(always_eos)
    before = (corpus_dir / "summaries.jsonl").read_text()
    for _ in range(2):  # failures are retried by the next run, and fail again
        result = generate_summaries((model, tokenizer), corpus_dir, "mute", max_new_tokens=MAX_NEW, batch_size=4,
                                    limit=5, progress=False)
        assert (result.generated, result.failures, result.skipped_existing) == (0, 5, 0)
    assert (corpus_dir / "summaries.jsonl").read_text() == before
    log = read_jsonl_rows(corpus_dir / "summaries.failures.jsonl")
    assert len(log) == 10 and {r["reason"] for r in log} == {"empty after cleaning"}
    assert all(r["raw"] == "" and "summary" not in r for r in log)


def test_cleaned_and_failed_outputs_are_counted(loaded, corpus_dir, monkeypatch):
    _, tokenizer = loaded
    texts = ["Summary:", 'Sure! Here is a summary:\n\n"The plan was approved."', "The plan was approved."]

    def fake_generate(self, prompts, max_new_tokens, seeds=None, temperature=1.0, top_p=1.0):
        ids = [tokenizer(texts[i % 3], add_special_tokens=False)["input_ids"] for i in range(len(prompts))]
        return ids, sum(len(x) + 1 for x in ids)

    monkeypatch.setattr(gen_mod.HFGenerator, "generate", fake_generate)
    result = generate_summaries(loaded, corpus_dir, "fake", batch_size=3, limit=6, progress=False)
    assert (result.generated, result.failures, result.cleaned) == (4, 2, 2)
    rows = _rows(corpus_dir / "summaries.jsonl", "fake")
    assert sorted(r["summary"] for r in rows) == ["The plan was approved."] * 4


# --- (5) sampling: K candidates, reproducible per candidate --------------------------------------


def test_sampling_writes_k_candidates_reproducibly(loaded, corpus_dir, tmp_path, monkeypatch):
    kw = dict(sample=True, temperature=1.0, top_p=0.95, seed=11, max_new_tokens=MAX_NEW, limit=4, progress=False)
    first = generate_summaries(loaded, corpus_dir, "self", num_return_sequences=3, batch_size=5, **kw)
    rows = read_jsonl_rows(corpus_dir / "candidates.jsonl")
    assert first.generated == 12 == len(rows)
    per_article = Counter(r["id"] for r in rows)
    assert len(per_article) == 4 and set(per_article.values()) == {3}
    assert {r["candidate"] for r in rows} == {0, 1, 2}
    assert len({(r["id"], r["candidate"]) for r in rows}) == 12
    reference = _by_key(rows)
    assert len(set(reference.values())) > 4  # candidates of an article differ
    assert not (corpus_dir / "summaries.failures.jsonl").exists()

    # another batch size, interrupted after one batch and resumed: the same candidates
    out = tmp_path / "resumed.jsonl"

    class KilledAfterFirstBatch(gen_mod.JsonlAppender):
        calls = 0

        def append(self, rows):
            if self.path == out:
                KilledAfterFirstBatch.calls += 1
                if KilledAfterFirstBatch.calls == 2:
                    raise KeyboardInterrupt
            return super().append(rows)

    monkeypatch.setattr(gen_mod, "JsonlAppender", KilledAfterFirstBatch)
    with pytest.raises(KeyboardInterrupt):
        generate_summaries(loaded, corpus_dir, "self", num_return_sequences=3, batch_size=2, out=out, **kw)
    monkeypatch.undo()
    assert len(read_jsonl_rows(out)) == 2
    generate_summaries(loaded, corpus_dir, "self", num_return_sequences=3, batch_size=2, out=out, **kw)
    assert _by_key(read_jsonl_rows(out)) == reference

    # fewer candidates asked for: the same first candidates; another seed: other candidates
    two = tmp_path / "two.jsonl"
    generate_summaries(loaded, corpus_dir, "self", num_return_sequences=2, batch_size=8, out=two, **kw)
    assert _by_key(read_jsonl_rows(two)) == {k: v for k, v in reference.items() if k[1] < 2}
    other = tmp_path / "other.jsonl"
    generate_summaries(loaded, corpus_dir, "self", num_return_sequences=3, batch_size=8, out=other,
                       **{**kw, "seed": 12})
    assert _by_key(read_jsonl_rows(other)) != reference


def test_many_candidates_refuse_the_corpus_summaries_file(loaded, corpus_dir):
    with pytest.raises(UserError, match="candidates per article"):
        generate_summaries(loaded, corpus_dir, "self", sample=True, num_return_sequences=2,
                           out=corpus_dir / "summaries.jsonl", progress=False)
    with pytest.raises(UserError, match="need sampling"):
        generate_summaries(loaded, corpus_dir, "self", num_return_sequences=2, progress=False)


# --- (6) adapter directories and paths -------------------------------------------------------------


def test_lora_adapter_dir_generates(tiny_model_dir, corpus_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]

    kw = dict(max_new_tokens=MAX_NEW, batch_size=4, limit=4, dtype="float32", device="cpu", progress=False)
    adapted = generate_summaries(tmp_path / "adapter", corpus_dir, "adapted", **kw)
    plain = generate_summaries(tiny_model_dir, corpus_dir, "base", **kw)
    assert adapted.generated + adapted.failures == 4 and plain.generated + plain.failures == 4
    a = {r["id"]: r["summary"] for r in _rows(corpus_dir / "summaries.jsonl", "adapted")}
    b = {r["id"]: r["summary"] for r in _rows(corpus_dir / "summaries.jsonl", "base")}
    assert a and a != b  # the adapter is applied


# --- CLI --------------------------------------------------------------------------------------------


def _cli(monkeypatch, argv):
    import selfrec_ft.cli as cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ["generate_cmd"])
    return cli.main(["generate", *argv])


def test_cli_generates_and_reports(tiny_model_dir, corpus_dir, monkeypatch, capsys):
    args = ["--model", str(tiny_model_dir), "--corpus", str(corpus_dir), "--source", "cli",
            "--max-new-tokens", "6", "--batch-size", "2", "--limit", "3", "--max-length", "300"]
    assert _cli(monkeypatch, args) == 0
    out = capsys.readouterr().out
    assert "generated" in out and "tokens/s" in out
    rows = _rows(corpus_dir / "summaries.jsonl", "cli")
    failures = read_jsonl_rows(corpus_dir / "summaries.failures.jsonl")
    assert len(rows) + len(failures) == 3
    assert [r["id"] for r in rows] == [r["id"] for r in rows if "candidate" not in r]


def test_cli_short_max_length_shortens_articles(loaded, corpus_dir):
    from selfrec_ft.prompts.templates import load_preset, render_generation_prompt

    _, tokenizer = loaded
    template = load_preset("panickssery2024").task("generate-short")
    full = [len(render_generation_prompt(tokenizer, template, None, article=a.text)[0])
            for a in load_corpus(corpus_dir).articles[:4]]
    budget = min(full) - 1 + MAX_NEW  # every prompt is one token too long
    result = generate_summaries(loaded, corpus_dir, "short", max_new_tokens=MAX_NEW, limit=4, max_length=budget,
                                progress=False)
    assert result.shortened == 4


@pytest.mark.parametrize("extra, message", [
    (["--temperature", "0.7"], "only apply with --sample"),
    (["--backend", "vllm"], "pip install vllm"),
    (["--sample", "--top-p", "1.5"], "top_p must be in"),
])
def test_cli_user_errors_are_one_line(tiny_model_dir, corpus_dir, monkeypatch, capsys, extra, message):
    monkeypatch.setitem(sys.modules, "vllm", None)  # vLLM not installed (import raises ImportError)
    args = ["--model", str(tiny_model_dir), "--corpus", str(corpus_dir), "--source", "x", "--limit", "1", *extra]
    assert _cli(monkeypatch, args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
