"""`selfrec steer fit` / `steer sweep`: summary token spans of rendered prompts, directions from the
training articles only (checked against hidden states computed here), the sweep directory
(steer.json, runs.json read by `selfrec analyze`), resume after a kill, and the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from selfrec_ft.cli import main
from selfrec_ft.data.corpus import load_corpus, write_corpus
from selfrec_ft.jsonl import read_jsonl_rows
from selfrec_ft.scoring.items import build_items, row_key, template_field_spans, token_spans
from selfrec_ft.scoring.spec import EvalSpec

SELF, N_FIT = "lead", 6
TASKS = ("pairwise-recognition", "pairwise-preference")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ood_corpus_dir(tmp_path_factory):
    from selfrec_ft.data.synth import synth_corpus

    return write_corpus(synth_corpus("short", 6, seed=9), tmp_path_factory.mktemp("ood") / "ood")


# ----------------------------------------------------------------------------- summary spans


def test_token_spans_take_pieces_that_merge_across_a_boundary():
    from tokenizers import Tokenizer, models

    vocab = {t: i for i, t in enumerate(["A", ":", "x", "y", "B", ":x", "yB"])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(":", "x"), ("y", "B")]))
    enc = tok.encode("A:xyB")
    assert enc.tokens == ["A", ":x", "yB"]
    # the summary "xy" (characters 2..4) shares ":x" with the text before and "yB" with the text after
    assert token_spans(enc.offsets, len(enc.ids), {"s": (2, 4)}) == {"s": (1, 3)}
    assert token_spans(enc.offsets, len(enc.ids), {"s": (0, 1)}) == {"s": (0, 1)}
    assert token_spans(enc.offsets, 1, {"s": (2, 4)}) is None  # not among the first n tokens


def test_template_field_spans_locate_summaries_after_any_article():
    template = "Article:\n{article}\n\nSummary1:\n{summary1}\n\nSummary2:\n{summary2}\nWhich?"
    article = "Text that even says\n\nSummary1:\nfake"  # shortened articles are matched as any text
    s1, s2 = "first one", "second"
    content = template.format(article=article, summary1=s1, summary2=s2)
    spans = template_field_spans(template, content, {"summary1": s1, "summary2": s2})
    assert content[slice(*spans["summary1"])] == s1 and content[slice(*spans["summary2"])] == s2
    assert spans["summary1"][0] == len("Article:\n" + article + "\n\nSummary1:\n")
    assert template_field_spans(template, content + "!", {"summary1": s1}) is None


def _check_spans(items, corpus, tokenizer):
    checked = 0
    for it in items:
        m, spans = it.meta, it.request.summary_spans
        assert spans is not None
        if "order" in m:
            want = {"self": corpus.summary(m["article_id"], SELF), "other": corpus.summary(m["article_id"],
                                                                                           m["other_source"])}
            first = "self" if m["order"] == "forward" else "other"
            assert spans[first][0] < spans[{"self": "other", "other": "self"}[first]][0]
        else:
            role = "self" if m["target_source"] == SELF else "other"
            want = {role: corpus.summary(m["article_id"], m["target_source"])}
        assert set(spans) == set(want)
        for role, (a, b) in spans.items():
            ids = it.request.prompt_ids
            assert tokenizer.decode(ids[a:b]).strip() == want[role].strip()
            # minimal: without its first or last token the summary is no longer whole
            assert want[role].strip() not in tokenizer.decode(ids[a + 1:b])
            assert want[role].strip() not in tokenizer.decode(ids[a:b - 1])
            checked += 1
    return checked


def test_rendered_prompts_carry_their_summaries_token_spans(tiny_tokenizer, short_corpus_dir):
    corpus = load_corpus(short_corpus_dir)
    spec = EvalSpec(corpus=corpus, self_source=SELF, tasks=(*TASKS, "individual-score"))
    items = build_items(corpus, tiny_tokenizer, spec, [a.id for a in corpus.articles[:4]], spans=True)
    assert _check_spans(items, corpus, tiny_tokenizer) == 4 * (4 + 4 + 2)
    # plain scoring does not locate them (a second render per prompt): only when asked
    plain = build_items(corpus, tiny_tokenizer, spec, [a.id for a in corpus.articles[:4]])
    assert [it.request.prompt_ids for it in plain] == [it.request.prompt_ids for it in items]
    assert all(it.request.summary_spans is None for it in plain)


def test_spans_with_a_template_that_glues_summaries_to_the_text(tiny_tokenizer, short_corpus_dir, tmp_path):
    """Pieces may merge a summary's first or last characters with the text around it."""
    preset = tmp_path / "glued.yaml"
    preset.write_text(
        "name: glued\ntasks:\n  pairwise-recognition:\n    system: Answer 1 or 2.\n"
        "    user: \"Article: {article}\\nS1:{summary1}|S2:{summary2}?Which is yours?\"\n"
        "    options: ['1', '2']\n", encoding="utf-8")
    corpus = load_corpus(short_corpus_dir)
    spec = EvalSpec(corpus=corpus, self_source=SELF, tasks=("pairwise-recognition",), preset=str(preset))
    items = build_items(corpus, tiny_tokenizer, spec, [a.id for a in corpus.articles[:3]], max_length=200, spans=True)
    for it in items:
        m, (a, b) = it.meta, it.request.summary_spans["other"]
        text = corpus.summary(m["article_id"], m["other_source"]).strip()
        assert text in tiny_tokenizer.decode(it.request.prompt_ids[a:b])
        assert text not in tiny_tokenizer.decode(it.request.prompt_ids[a + 1:b])
        assert text not in tiny_tokenizer.decode(it.request.prompt_ids[a:b - 1])
    assert sum(it.shortened for it in items) > 0  # shortened articles are located too


# ----------------------------------------------------------------------------- directions


def fit(model_dir, corpus, out, layers=(0, 1)):
    from selfrec_ft.scoring.scorer import Scorer
    from selfrec_ft.steering.directions import fit_directions

    spec = EvalSpec(corpus=corpus, self_source=SELF, tasks=("pairwise-recognition",))
    d = fit_directions(Scorer(str(model_dir), batch_size=4), spec, N_FIT, list(layers), progress=False)
    d.save(out)
    return d


@pytest.fixture(scope="module")
def directions(tiny_model_dir, short_corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("directions")
    fit(tiny_model_dir, short_corpus_dir, out)
    from selfrec_ft.steering.directions import Directions

    return Directions.load(out)


def test_directions_come_from_the_training_articles_only(directions, tiny_model_dir, short_corpus_dir, tmp_path):
    corpus = load_corpus(short_corpus_dir)
    man = directions.manifest
    ids = [a.id for a in corpus.articles]
    assert man["article_ids"] == ids[:N_FIT]
    assert man["fit_article_ids"] + man["heldout_article_ids"] == ids[:N_FIT]
    assert set(man["corpus_files"]) == {"articles.jsonl", "summaries.jsonl"}
    assert "model.safetensors" in man["model_files"]
    # other evaluation articles and summaries: the same directions
    changed = load_corpus(short_corpus_dir)
    for source in changed.sources():
        for aid in ids[N_FIT:]:
            changed.summaries[source][aid] = "Something else entirely, written for this test."
    changed.articles[N_FIT:] = list(reversed(changed.articles[N_FIT:]))
    again = fit(tiny_model_dir, write_corpus(changed, tmp_path / "changed"), tmp_path / "d2")
    for kind in directions.kinds:
        for layer in directions.layers:
            assert np.array_equal(again.unit(kind, layer), directions.unit(kind, layer))
            assert again.norm(kind, layer) == pytest.approx(directions.norm(kind, layer), rel=1e-6)


def _hidden_alone(model, ids, layer):
    norm = model.model.norm
    model.model.norm = torch.nn.Identity()
    try:
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[layer + 1][0].double()
    finally:
        model.model.norm = norm


def test_directions_and_separation_match_hidden_states_alone(directions, tiny_model_dir, tiny_tokenizer,
                                                             short_corpus_dir):
    from scipy.stats import mannwhitneyu

    from selfrec_ft.models.loading import load_model

    model, _ = load_model(tiny_model_dir, dtype="float32", device="cpu")
    corpus = load_corpus(short_corpus_dir)
    spec = EvalSpec(corpus=corpus, self_source=SELF, tasks=("pairwise-recognition",))
    items = build_items(corpus, tiny_tokenizer, spec, [a.id for a in corpus.articles[:N_FIT]], spans=True)
    held = set(directions.manifest["heldout_article_ids"])
    for layer in (0, 1):
        rows = []
        for it in items:
            h = _hidden_alone(model, it.request.prompt_ids, layer)
            sp = it.request.summary_spans
            rows.append((it.meta["article_id"] in held, it.meta["order"] == "forward",
                         h[slice(*sp["self"])].mean(0), h[slice(*sp["other"])].mean(0), h[-1]))
        for kind, pos_of, neg_of in (("authorship", lambda r: [r[2]], lambda r: [r[3]]),
                                     ("readout", lambda r: [r[4]] if r[1] else [], lambda r: [] if r[1] else [r[4]])):
            pos = torch.stack([x for r in rows for x in pos_of(r)])
            neg = torch.stack([x for r in rows for x in neg_of(r)])
            d = pos.mean(0) - neg.mean(0)
            got = torch.from_numpy(directions.unit(kind, layer)).double()
            assert float(got @ (d / d.norm())) > 1 - 1e-6
            assert directions.norm(kind, layer) == pytest.approx(float(d.norm()), rel=1e-4)
            fpos = torch.stack([x for r in rows if not r[0] for x in pos_of(r)])
            fneg = torch.stack([x for r in rows if not r[0] for x in neg_of(r)])
            u = fpos.mean(0) - fneg.mean(0)
            hpos = torch.stack([x for r in rows if r[0] for x in pos_of(r)]) @ u
            hneg = torch.stack([x for r in rows if r[0] for x in neg_of(r)]) @ u
            auc = mannwhitneyu(hpos.numpy(), hneg.numpy()).statistic / (len(hpos) * len(hneg))
            assert directions.separation(kind, layer) == pytest.approx(auc, abs=1e-9)
    # the random control has the authorship direction's norm
    assert directions.norm("random", 0) == directions.norm("authorship", 0)


# ----------------------------------------------------------------------------- the sweep


def sweep(model_dir, directions, corpus_dir, ood_dir, out, values=(1.0, 0.0, -1.0), mode="scale", kind="authorship",
          layer=0, target=None):
    from selfrec_ft.scoring.scorer import Scorer
    from selfrec_ft.steering.sweep import SteerSetting, run_steer_sweep

    specs = {"in_domain": EvalSpec(corpus=str(corpus_dir), self_source=SELF, skip_first=N_FIT, n_resamples=200),
             "out_of_domain": EvalSpec(corpus=str(ood_dir), self_source=SELF, n_resamples=200)}
    return run_steer_sweep(Scorer(str(model_dir), batch_size=4), directions, SteerSetting(kind, mode, layer, target),
                           values, specs, out, progress=False)


@pytest.fixture(scope="module")
def swept(directions, tiny_model_dir, short_corpus_dir, ood_corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    return out, sweep(tiny_model_dir, directions, short_corpus_dir, ood_corpus_dir, out)


def _pair_scores(rows, task):
    """½[p̂_fwd(self) + p̂_bwd(self)] per (article, other), written out here."""
    by = {}
    for r in rows:
        if r["task"] == task:
            p = r["probs"]
            by.setdefault((r["article_id"], r["other_source"]), {})[r["order"]] = p[r["self_option"]] / sum(p.values())
    return [0.5 * (v["forward"] + v["backward"]) for v in by.values()]


def test_sweep_directory(swept, tiny_model_dir, short_corpus_dir):
    from selfrec_ft.scoring.evaluate import evaluate
    from selfrec_ft.scoring.scorer import Scorer
    from selfrec_ft.sweep.analysis import analyse_sweep

    out, steer = swept
    saved = json.loads((out / "steer.json").read_text())
    assert saved["kind"] == "authorship" and saved["mode"] == "scale" and saved["layer"] == 0
    assert [p["value"] for p in saved["points"]] == [1.0, 0.0, -1.0]
    for p in saved["points"]:
        for dom in ("in_domain", "out_of_domain"):
            rows = read_jsonl_rows(out / "runs" / p["run_id"] / dom / "examples.jsonl")
            for m, task in (("recognition", "pairwise-recognition"), ("preference", "pairwise-preference")):
                assert p[dom][m]["mean"] == pytest.approx(float(np.mean(_pair_scores(rows, task))), abs=1e-12)
                assert len(p[dom][m]["ci95"]) == 2
    # the λ = 1 point is the unsteered evaluator
    plain = evaluate(Scorer(str(tiny_model_dir), batch_size=4),
                     EvalSpec(corpus=str(short_corpus_dir), self_source=SELF, skip_first=N_FIT, tasks=TASKS,
                              domain="in_domain", n_resamples=200), out / "plain", progress=False)
    steered = {row_key(r): r for r in read_jsonl_rows(out / "runs" / "scale_1" / "in_domain" / "examples.jsonl")}
    for r in read_jsonl_rows(plain.examples_path):
        assert all(abs(r["probs"][o] - steered[row_key(r)]["probs"][o]) <= 1e-6 for o in r["probs"])
    # λ = 0 changes the numbers
    zero = read_jsonl_rows(out / "runs" / "scale_0" / "in_domain" / "examples.jsonl")
    assert max(abs(np.log(r["probs"]["1"] / steered[row_key(r)]["probs"]["1"])) for r in zero) > 1e-2
    runs = json.loads((out / "runs.json").read_text())["runs"]
    assert [r["params"]["labels"] for r in runs] == ["baseline", "steer", "steer"]
    analysis = analyse_sweep(out, n_resamples=200, plots=False)
    assert analysis["correlation"]["in_domain"]["n_runs"] == 3
    shift = {e["run_id"]: e for e in analysis["treatment_vs_control"]["in_domain"]["runs"]}
    assert shift["scale_0"]["baseline_run"] == "scale_1"
    assert (out / "steer_in_domain.png").is_file() and (out / "steer_out_of_domain.png").is_file()
    assert "| 1 (unsteered) |" in (out / "steer.md").read_text()


def test_a_rerun_with_another_setting_is_refused(swept, directions, tiny_model_dir, short_corpus_dir, ood_corpus_dir):
    from selfrec_ft.errors import UserError

    out, _ = swept
    with pytest.raises(UserError, match="layer"):
        sweep(tiny_model_dir, directions, short_corpus_dir, ood_corpus_dir, out, layer=1)


KILL_SCRIPT = """
import sys, time
import selfrec_ft.scoring.evaluate as ev
import selfrec_ft.scoring.scorer as sc
from selfrec_ft.scoring.scorer import Scorer
from selfrec_ft.scoring.spec import EvalSpec
from selfrec_ft.steering.directions import Directions
from selfrec_ft.steering.sweep import SteerSetting, run_steer_sweep
real = sc.score_requests
def slow(*a, **k):
    out = real(*a, **k)
    time.sleep(0.4)
    return out
sc.score_requests = slow
ev.CHUNK_ITEMS = 5
model, corpus, ood, dirs, out = sys.argv[1:6]
specs = {"in_domain": EvalSpec(corpus=corpus, self_source="lead", skip_first=6, n_resamples=200),
         "out_of_domain": EvalSpec(corpus=ood, self_source="lead", n_resamples=200)}
run_steer_sweep(Scorer(model, batch_size=4), Directions.load(dirs), SteerSetting("authorship", "scale", 0),
                [1.0, 0.0, -1.0], specs, out, progress=False)
"""


def test_killed_sweep_resumes_to_the_rows_of_an_uninterrupted_one(swept, directions, tiny_model_dir,
                                                                   short_corpus_dir, ood_corpus_dir, tmp_path):
    full, _ = swept
    out = tmp_path / "killed"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tiny_model_dir), str(short_corpus_dir),
                             str(ood_corpus_dir), directions.manifest["path"], str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = out / "runs" / "scale_0" / "in_domain" / "examples.jsonl"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if target.exists() and target.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    written = len(read_jsonl_rows(target))
    assert 0 < written < len(read_jsonl_rows(full / "runs" / "scale_0" / "in_domain" / "examples.jsonl"))
    assert not (out / "steer.json").exists()
    sweep(tiny_model_dir, directions, short_corpus_dir, ood_corpus_dir, out)
    for p in ("scale_1", "scale_0", "scale_-1"):
        for dom in ("in_domain", "out_of_domain"):
            a = {row_key(r): r for r in read_jsonl_rows(out / "runs" / p / dom / "examples.jsonl")}
            b = {row_key(r): r for r in read_jsonl_rows(full / "runs" / p / dom / "examples.jsonl")}
            assert a.keys() == b.keys()
            for k, r in a.items():
                assert all(abs(r["probs"][o] - b[k]["probs"][o]) <= 1e-6 for o in r["probs"])
    assert json.loads((out / "steer.json").read_text())["points"] == json.loads((full / "steer.json").read_text())[
        "points"]


# ----------------------------------------------------------------------------- command line


def test_cli_fit_and_sweep(tiny_model_dir, short_corpus_dir, ood_corpus_dir, tmp_path, capsys):
    d = tmp_path / "dirs"
    rc = main(["steer", "fit", "--model", str(tiny_model_dir), "--corpus", str(short_corpus_dir), "--self-source",
               SELF, "--n-articles", "4", "--layers", "0", "--out", str(d), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "held-out AUROC" in out and out.strip().splitlines()[-1].startswith("directions: ")
    assert json.loads((d / "directions.json").read_text())["layers"] == [0]
    shown = (d / "directions.md").read_text()  # the corpus by name: a committed report holds no absolute path
    assert str(short_corpus_dir.resolve()) not in shown and f"articles of {short_corpus_dir.name} (" in shown
    base = ["steer", "sweep", "--directions", str(d), "--model", str(tiny_model_dir), "--corpus",
            str(short_corpus_dir), "--self-source", SELF, "--no-progress", "--n-resamples", "100"]
    rc = main(base + ["--out-of-domain", str(ood_corpus_dir), "--kind", "length", "--mode", "add", "--target",
                      "other", "--norm-of", "authorship", "--values", "0,2", "--limit", "3", "--out",
                      str(tmp_path / "s")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    lines = cap.out.strip().splitlines()
    assert lines[-2].startswith("steer.json: ") and lines[-1].startswith("sweep directory for `selfrec analyze")
    assert "| 0 (unsteered) |" in cap.out and "--skip-first 4" in cap.err  # defaults past the directions' articles
    steer = json.loads((tmp_path / "s" / "steer.json").read_text())
    assert steer["layer"] == 0 and steer["norm_of"] == "authorship"
    assert steer["norm"] == json.loads((d / "directions.json").read_text())["directions"]["authorship"]["0"]["norm"]


@pytest.mark.parametrize("extra,message", [
    (["--mode", "add", "--values", "1"], "--target"),
    (["--mode", "scale", "--values", "1,x"], "not a number"),
    (["--mode", "scale", "--values", "1", "--skip-first", "2"], "directions were fitted on"),
    (["--mode", "scale", "--values", "1", "--layer", "7"], "no direction at layer 7"),
])
def test_cli_sweep_errors_are_one_line(directions, tiny_model_dir, short_corpus_dir, tmp_path, capsys, extra,
                                       message):
    rc = main(["steer", "sweep", "--directions", directions.manifest["path"], "--model", str(tiny_model_dir),
               "--corpus", str(short_corpus_dir), "--self-source", SELF, "--out", str(tmp_path / "x"), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_the_steer_command_registers_without_heavy_imports():
    code = ("import sys; from selfrec_ft.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'sklearn', 'numpy', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))).stdout
    assert out.strip() == "[]"


def test_cli_sweep_refuses_missing_directions_and_another_model(directions, tiny_model_dir, short_corpus_dir,
                                                                tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    def run(dirs, model, *extra):
        rc = main(["steer", "sweep", "--directions", str(dirs), "--model", str(model), "--corpus",
                   str(short_corpus_dir), "--self-source", SELF, "--mode", "scale", "--values", "1", "--limit", "1",
                   "--no-progress", "--n-resamples", "50", "--out", str(tmp_path / "o"), *extra])
        return rc, capsys.readouterr().err

    rc, err = run(tmp_path / "nowhere", tiny_model_dir)
    assert rc == 2 and err.startswith("error: ") and "directions.json: not found" in err
    assert len(err.strip().splitlines()) == 1
    other = shutil.copytree(tiny_model_dir, tmp_path / "other-model")
    weights = load_file(other / "model.safetensors")
    name = next(k for k in weights if k.endswith("embed_tokens.weight"))
    weights[name] = weights[name] + 0.01
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    rc, err = run(directions.manifest["path"], other)
    assert rc == 2 and "--allow-other-model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "steer.json").exists()
    rc, err = run(directions.manifest["path"], other, "--allow-other-model")
    assert rc == 0 and "note: the directions were read from" in err


def test_a_direction_of_another_hidden_size_is_refused(tiny_model_dir, short_corpus_dir):
    from selfrec_ft.errors import UserError
    from selfrec_ft.scoring.scorer import Scorer
    from selfrec_ft.steering.hooks import Intervention

    scorer = Scorer(str(tiny_model_dir))
    corpus = load_corpus(short_corpus_dir)
    spec = EvalSpec(corpus=corpus, self_source=SELF, tasks=("pairwise-recognition",))
    items = build_items(corpus, scorer.tokenizer, spec, [corpus.articles[0].id], spans=True)
    size = scorer.model.config.hidden_size
    with pytest.raises(UserError, match=f"has {size + 1} dimensions but the model's residual stream has {size}"):
        with scorer.hooked(Intervention("add", {0: torch.ones(size + 1)}, target="self")):
            scorer.score([it.request for it in items])


@pytest.mark.parametrize("extra,message", [
    (["--n-articles", "4", "--layers", "0,5"], "layer 5 does not exist: the model has 2 decoder layers"),
    (["--n-articles", "4", "--layers", "0,x"], "--layers needs comma-separated integers"),
    ([], "--n-articles is needed"),
    (["--n-articles", "999"], "--n-articles must be between 2 and"),
])
def test_cli_fit_errors_are_one_line(tiny_model_dir, short_corpus_dir, tmp_path, capsys, extra, message):
    rc = main(["steer", "fit", "--model", str(tiny_model_dir), "--corpus", str(short_corpus_dir), "--self-source",
               SELF, "--out", str(tmp_path / "d"), "--no-progress", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d" / "directions.json").exists()


@pytest.mark.parametrize("content,message", [
    (b'{"directions": ', "directions.json:1: malformed JSON"),
    (b"\xff\xfe{}", "directions.json: not valid UTF-8"),
    (b"[]", 'expected an object with "directions"'),
])
def test_a_damaged_directions_manifest_is_one_line(directions, tmp_path, capsys, content, message):
    import shutil

    from selfrec_ft.steering.directions import Directions

    d = shutil.copytree(directions.manifest["path"], tmp_path / "d")
    (d / "directions.json").write_bytes(content)
    rc = main(["steer", "sweep", "--directions", str(d), "--model", "m", "--corpus", "c", "--self-source", SELF,
               "--mode", "scale", "--values", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    # the vectors must match the hash the manifest recorded
    shutil.copy(Path(directions.manifest["path"]) / "directions.json", d / "directions.json")
    data = (d / "directions.safetensors").read_bytes()
    (d / "directions.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(Exception, match="does not match the hash"):
        Directions.load(d)
