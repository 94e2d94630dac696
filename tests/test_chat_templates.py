"""Any chat model: the one rendering path on four tokenizer and chat-template shapes
(``tests/chat_shapes.py``: Llama-3.1, Qwen2.5, Mistral-v0.3, Gemma-2), each with a tiny random Llama.

On every shape: the system-role decision and end-of-turn tokens, answer slots, scoring (equal to one
prompt at a time, the decision in the report), the pairs dataset (no system message where the
template has none), three training steps of the main job through ``accelerate launch
recipes/selfrec_sft.py`` (shared-prefix rows on two of the shapes, and the packed mask checked
in-process on the others; bf16 on two), and generation stopping on the template's end-of-turn id and on every
id of an ``eos_token_id`` list.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from chat_shapes import SHAPES, build_tokenizer

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "selfrec_sft.py"
FOUR = ("llama3", "qwen2.5", "mistral", "gemma")
TOL = 1e-4  # the engine's float32 contract: every result equals the prompt scored alone


def _tokenizer(path):
    from selfrec_ft.models.loading import load_tokenizer

    return load_tokenizer(path)


def _expected_messages(shape, system: str, user: str) -> list[dict]:
    """The messages the template should receive, written out here (not by the library)."""
    if SHAPES[shape].folds_system:
        return [{"role": "user", "content": system + "\n\n" + user}]
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# --- the decision ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", FOUR)
def test_system_role_and_end_of_turn_are_decided_once_per_tokenizer(shape, chat_shape_model, caplog):
    from selfrec_ft.prompts.chat import chat_format, chat_text

    tok = _tokenizer(chat_shape_model(shape))
    with caplog.at_level("WARNING"):
        fmt = chat_format(tok)
        assert chat_format(tok) is fmt  # kept for the tokenizer's life
    assert fmt.folds_system == SHAPES[shape].folds_system
    assert fmt.end_of_turn_tokens == (SHAPES[shape].end_of_turn,)
    assert fmt.end_of_turn == (tok.convert_tokens_to_ids(SHAPES[shape].end_of_turn),)
    warned = [r for r in caplog.records if "folded" in r.getMessage()]
    assert len(warned) == (1 if fmt.folds_system else 0)  # said once, not silently
    if shape == "gemma":
        assert "System role not supported" in fmt.reason
    if shape == "mistral":
        assert "holds the assistant's answer" in fmt.reason
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which one?"}]
    want = tok.apply_chat_template(_expected_messages(shape, "Be brief.", "Which one?"), tokenize=False,
                                   add_generation_prompt=True)
    assert chat_text(tok, msgs, True) == want
    answer = [{"role": "assistant", "content": "1"}]
    full = chat_text(tok, msgs + answer, False)  # the system text survives next to an answer too
    assert "Be brief." in full and full.startswith(want)
    tok.chat_template = tok.chat_template + "{# edited #}"  # a new template is decided again
    assert chat_format(tok) is not fmt


def test_a_template_that_cannot_render_an_answer_is_one_line(chat_shape_model):
    from selfrec_ft.errors import UserError
    from selfrec_ft.prompts.chat import chat_format

    tok = _tokenizer(chat_shape_model("gemma"))
    tok.chat_template = "{{ raise_exception('no assistant turns here') }}"
    with pytest.raises(UserError, match="cannot render a user turn and an assistant answer .no assistant turns"):
        chat_format(tok)


# --- answer slots ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", (*FOUR, "bytelevel-llama2"))
@pytest.mark.parametrize("preset", ("panickssery2024", "panickssery2024-exact"))
def test_answer_slots_read_the_token_the_template_writes(shape, preset, chat_shape_model):
    from selfrec_ft.prompts.templates import load_preset, render_prompt

    tok = build_tokenizer(SHAPES[shape]) if shape == "bytelevel-llama2" else _tokenizer(chat_shape_model(shape))
    p = load_preset(preset)
    for task in ("pairwise-recognition", "individual-recognition", "individual-score"):
        tmpl = p.task(task)
        values = {f: f"The {f} text." for f in tmpl.fields}
        rp = render_prompt(tok, tmpl, None, **values)
        user = tmpl.user.format(**values)
        for option, token in rp.option_ids.items():
            conv = _expected_messages(shape, tmpl.system, user) + [
                {"role": "assistant", "content": tmpl.assistant_prefix + option}]
            full = tok(tok.apply_chat_template(conv, tokenize=False), add_special_tokens=False)["input_ids"]
            # the scored prompt + the option's token begin the rendering of that very answer
            assert full[: len(rp.input_ids) + 1] == rp.input_ids + [token]
            assert tok.decode([token]).strip() == option
            # what follows the option is the end of the turn: whitespace and special tokens only
            rest = full[len(rp.input_ids) + 1:]
            assert tok.decode(rest, skip_special_tokens=True).strip() == ""
        if shape == "bytelevel-llama2" and preset == "panickssery2024" and task != "individual-recognition":
            # the digit joined the space the template writes before the answer
            assert tok.convert_ids_to_tokens(list(rp.option_ids.values()))[0] == "Ġ1"


# --- scoring --------------------------------------------------------------------------------------


def _user_text(tmpl, corpus, row) -> str:
    """The user message of a scoring row, from the corpus (no article is shortened here)."""
    article = corpus.article(row["article_id"]).text
    if row["task"].startswith("pairwise"):
        own, theirs = corpus.summary(row["article_id"], row["self_source"]), corpus.summary(row["article_id"],
                                                                                            row["other_source"])
        s1, s2 = (own, theirs) if row["order"] == "forward" else (theirs, own)
        return tmpl.user.format(article=article, summary1=s1, summary2=s2)  # (P1's wording names no source)
    return tmpl.user.format(article=article, summary=corpus.summary(row["article_id"], row["target_source"]))


@pytest.mark.parametrize("shape", FOUR)
def test_scoring_equals_one_prompt_at_a_time_and_records_the_decision(shape, chat_shape_model, short_corpus_dir,
                                                                      tmp_path):
    from selfrec_ft.data.corpus import load_corpus
    from selfrec_ft.models.loading import load_model
    from selfrec_ft.prompts.templates import load_preset
    from selfrec_ft.scoring.evaluate import evaluate
    from selfrec_ft.scoring.scorer import Scorer
    from selfrec_ft.scoring.spec import EvalSpec

    model_dir = chat_shape_model(shape)
    spec = EvalSpec(corpus=str(short_corpus_dir), self_source="lead",
                    tasks=("pairwise-recognition", "individual-recognition", "familiarity"), domain="short",
                    skip_first=9, limit=2, n_resamples=50)
    scorer = Scorer(str(model_dir), batch_size=4)
    result = evaluate(scorer, spec, tmp_path / "eval", progress=False)
    items = {it.key: it for it in scorer.items(spec)}
    rows = [json.loads(x) for x in (tmp_path / "eval" / "examples.jsonl").read_text().splitlines()]
    assert len(rows) == len(items) == 2 * (2 + 2 + 2)

    chat = result.report["meta"]["eval"]["chat_template"]
    assert chat["system_role"] == ("folded" if SHAPES[shape].folds_system else "native")
    assert chat["end_of_turn"] == [SHAPES[shape].end_of_turn]
    assert ("no system role" in result.markdown) == SHAPES[shape].folds_system

    model, tok = load_model(model_dir, dtype="float32", device="cpu")
    preset = load_preset("panickssery2024")
    corpus = load_corpus(short_corpus_dir)
    for row in rows:
        req = items[(row["task"], row["article_id"], row.get("other_source", row.get("target_source")),
                     row.get("order"))].request
        with torch.no_grad():
            logits = model(torch.tensor([req.prompt_ids + list(req.span_ids or [])])).logits[0].float()
        if row["task"] == "familiarity":
            n = len(req.prompt_ids)
            lp = torch.log_softmax(logits[n - 1:-1], -1).gather(1, torch.tensor(req.span_ids)[:, None])
            assert abs(row["mean_logprob"] - lp.mean().item()) <= TOL
            continue
        probs = torch.softmax(logits[-1], -1)
        for option, p in row["probs"].items():
            ref = probs[req.option_ids[option]].item()
            assert abs(p - ref) <= TOL and abs(p - ref) <= 1e-3 * ref
        # the prompt is the template's generation prompt (system text included), then at most the
        # whitespace every answer starts with
        tmpl = preset.task(row["task"])
        gen = tok(tok.apply_chat_template(_expected_messages(shape, tmpl.system, _user_text(tmpl, corpus, row)),
                                          tokenize=False, add_generation_prompt=True), add_special_tokens=False)
        gen = gen["input_ids"]
        assert req.prompt_ids[:len(gen)] == gen and tok.decode(req.prompt_ids[len(gen):]).strip() == ""


# --- pairs and training ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", FOUR)
def test_pairs_rows_are_rendered_as_the_template_takes_them(shape, chat_shape_model, short_corpus_dir):
    from selfrec_ft.data.corpus import load_corpus
    from selfrec_ft.pairs.build import build_pairwise_dataset
    from selfrec_ft.prompts.templates import load_preset
    from selfrec_ft.training.sft import check_sequences

    tok = _tokenizer(chat_shape_model(shape))
    system = load_preset("panickssery2024").task("pairwise-recognition").system
    ds, stats = build_pairwise_dataset(load_corpus(short_corpus_dir), "lead", ["human"], n_articles=3,
                                       tokenizer=tok)
    assert stats.chat["system_role"] == ("folded" if SHAPES[shape].folds_system else "native")
    for prompt in ds["prompt"]:
        if SHAPES[shape].folds_system:
            assert [m["role"] for m in prompt] == ["user"] and prompt[0]["content"].startswith(system + "\n\n")
        else:
            assert [m["role"] for m in prompt] == ["system", "user"] and prompt[0]["content"] == system
    seq = check_sequences(ds, tok)  # tokenizes every row as TRL does: no template error
    eot = SHAPES[shape].end_of_turn
    assert seq.end_of_turn == [eot]
    for answer, pieces in seq.completion_tokens.items():  # the answer, then the template's end of turn
        assert answer in pieces and eot in pieces[pieces.index(answer):]
    # rows built without the tokenizer keep the system message: refused in one line where it cannot go
    raw, _ = build_pairwise_dataset(load_corpus(short_corpus_dir), "lead", ["human"], n_articles=1)
    if SHAPES[shape].folds_system:
        from selfrec_ft.errors import UserError

        with pytest.raises(UserError, match="has a system message, which this chat template cannot take"):
            check_sequences(raw, tok)


def test_selfrec_pairs_says_when_it_folds_the_system_turn(chat_shape_model, short_corpus_dir, tmp_path, capsys):
    from selfrec_ft.cli import main

    out = tmp_path / "pairs.jsonl"
    rc = main(["pairs", "--corpus", str(short_corpus_dir), "--self-source", "lead", "--others", "human",
               "--n-articles", "2", "--tokenizer", str(chat_shape_model("gemma")), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "folded into the user message (the chat template rejects a system message" in printed
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 4 and all([m["role"] for m in r["prompt"]] == ["user"] for r in rows)


def _sft_config(tmp_path: Path, corpus: Path, out: Path, share_prefix: bool, **extra) -> Path:
    cfg = {"corpus": str(corpus), "self_source": "lead", "others": "human", "n_articles": 2,
           "share_prefix": share_prefix, "use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
           "dtype": "float32", "output_dir": str(out), "use_cpu": True, "bf16": False,
           "activation_checkpointing": False, "max_length": 1024, "per_device_train_batch_size": 2,
           "learning_rate": 1e-3, "max_steps": 3, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
           "seed": 0, "disable_tqdm": True, **extra}
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch_sft(config: Path, model_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    """``accelerate launch recipes/selfrec_sft.py --config C --model_name_or_path M`` (one CPU process)."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "accelerate_configs" / "default.yaml"), str(RECIPE), "--config", str(config),
           "--model_name_or_path", str(model_dir), *flags]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400, cwd=REPO)


SHARED = {"llama3": False, "qwen2.5": True, "mistral": False, "gemma": True}
BF16 = {"llama3": True, "qwen2.5": False, "mistral": False, "gemma": True}  # dtype bfloat16 + bf16: true


@pytest.mark.slow
@pytest.mark.timeout(450)
@pytest.mark.parametrize("shape", FOUR)
def test_three_steps_of_the_main_job_train_on_every_shape(shape, chat_shape_model, short_corpus_dir, tmp_path):
    out = tmp_path / "out"
    bf16 = {"dtype": "bfloat16", "bf16": True} if BF16[shape] else {}
    proc = launch_sft(_sft_config(tmp_path, short_corpus_dir, out, SHARED[shape], **bf16), chat_shape_model(shape))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    man = json.loads((out / "training_manifest.json").read_text())
    assert man["status"] == "done" and man["global_step"] == 3 and man["rows"] == 4
    assert man["chat_template"]["system_role"] == ("folded" if SHAPES[shape].folds_system else "native")
    eot = SHAPES[shape].end_of_turn
    assert {a: p[-3:].count(eot) for a, p in man["completion_tokens"].items()} == {"1": 1, "2": 1}
    assert (man["share_prefix"] is not None) == SHARED[shape]
    assert man["precision"]["bf16"] is BF16[shape]  # bf16 over bf16 weights is kept on CPU
    assert (out / "adapter_model.safetensors").is_file()
    if SHAPES[shape].folds_system:
        assert "folded into the first user turn" in proc.stderr  # said, not silent


@pytest.mark.parametrize("shape", FOUR)
def test_the_other_row_layout_passes_the_mask_checks(shape, chat_shape_model, short_corpus_dir, tmp_path):
    """The layout the subprocess run did not use, prepared in-process: prepare_sft runs the
    completion-only mask check (one example per row) or the packed one (shared-prefix rows)."""
    from trl import ModelConfig, SFTConfig

    from selfrec_ft.training.args import SelfRecDataArguments
    from selfrec_ft.training.sft import prepare_sft

    share = not SHARED[shape]
    data = SelfRecDataArguments(corpus=str(short_corpus_dir), self_source="lead", others="human", n_articles=2,
                                share_prefix=share)
    args = SFTConfig(output_dir=str(tmp_path / "o"), use_cpu=True, bf16=False, max_length=1024,
                     per_device_train_batch_size=2, max_steps=1, report_to="none", save_strategy="no")
    model = ModelConfig(model_name_or_path=str(chat_shape_model(shape)), use_peft=True, lora_r=4, lora_alpha=8)
    setup = prepare_sft(data, args, model)
    eot = _tokenizer(chat_shape_model(shape)).convert_tokens_to_ids(SHAPES[shape].end_of_turn)
    assert all(eot in c for c in setup.sequences.completion_ids)
    assert (setup.shared_prefix is not None) == share
    if share:
        assert setup.trainer.attention_path == "packed"


# --- generation -----------------------------------------------------------------------------------


def _successor_model(model_dir: Path, chain: list[int], seed: int = 0):
    """The shape's tiny Llama rewired so that its next token depends on the current one only:
    attention and MLP outputs are zero (the residual stream is the token's embedding) and the output
    row of ``chain[i + 1]`` is the embedding of ``chain[i]``: greedy decoding walks the chain."""
    from selfrec_ft.models.loading import load_model

    model, tok = load_model(model_dir, dtype="float32", device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight
        head.copy_(torch.randn(head.shape, generator=g) * 1e-3)
        for a in chain:  # the pad token's embedding row is zero (padding_idx): give it a direction
            if emb[a].norm() == 0:
                emb[a] = torch.randn(emb.shape[1], generator=g)
        for a, b in zip(chain[:-1], chain[1:]):
            head[b] = emb[a] / emb[a].norm() * 100
    return model, tok


def _words(tok, n: int) -> list[int]:
    """Ids of ``n`` vocabulary entries that decode to plain lowercase words of 4+ letters."""
    found = []
    for i in range(len(tok)):
        text = tok.decode([i])
        if text.strip().isalpha() and text.strip().islower() and len(text.strip()) >= 4 and i not in found:
            found.append(i)
        if len(found) == n:
            return found
    raise AssertionError("too few word tokens")


def _generate(model, tok, corpus_dir, tmp_path, name):
    from selfrec_ft.generation.generate import generate_summaries

    out = tmp_path / f"{name}.jsonl"
    res = generate_summaries((model, tok), corpus_dir, "self", max_new_tokens=8, batch_size=2, limit=2, out=out,
                             progress=False)
    return res, [json.loads(x)["summary"] for x in out.read_text().splitlines()]


@pytest.mark.parametrize("shape", FOUR)
def test_generation_stops_on_the_templates_end_of_turn_and_every_eos_id(shape, chat_shape_model, short_corpus_dir,
                                                                        tmp_path):
    from selfrec_ft.prompts.templates import load_preset, render_generation_prompt

    model_dir = chat_shape_model(shape)
    tok = _tokenizer(model_dir)
    template = load_preset("panickssery2024").task("generate-short")
    last = render_generation_prompt(tok, template, None, article="Any article.")[0][-1]  # the same for every article
    w1, w2, w3, w4 = _words(tok, 4)
    shipped = [tok.convert_tokens_to_ids(t) for t in SHAPES[shape].generation_eos]
    eot = tok.convert_tokens_to_ids(SHAPES[shape].end_of_turn)
    expected = tok.decode([w1, w2]).strip()
    for stop in dict.fromkeys([eot, *shipped]):  # every id of the generation config's list, and the turn end
        model, tok = _successor_model(model_dir, [last, w1, w2, stop, w3, w4])
        assert sorted(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
                      else [model.generation_config.eos_token_id]) == sorted(shipped)
        res, summaries = _generate(model, tok, short_corpus_dir, tmp_path, f"s{stop}")
        assert summaries == [expected, expected], (tok.convert_ids_to_tokens([stop]), summaries)
        assert res.new_tokens == 2 * 3
        assert res.chat["system_role"] == ("folded" if SHAPES[shape].folds_system else "native")
    # a generation config that lists only the tokenizer's EOS still stops where the template ends a turn
    model, tok = _successor_model(model_dir, [last, w1, w2, eot, w3, w4])
    model.generation_config.eos_token_id = tok.eos_token_id
    _, summaries = _generate(model, tok, short_corpus_dir, tmp_path, "only-eos")
    assert summaries == [expected, expected]
