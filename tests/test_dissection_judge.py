"""Judge labels through the scoring engine and the ``self`` feature for base vs fine-tuned judges."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from selfrec_ft.attributes.measures import comparison_features
from selfrec_ft.cli import main
from selfrec_ft.cli.dissect_cmd import parse_judge
from selfrec_ft.data.corpus import load_corpus, write_corpus
from selfrec_ft.data.synth import synth_corpus
from selfrec_ft.dissection.judge import TIE_TOLERANCE, drop_reason, judge_pairs, label_preference
from selfrec_ft.dissection.judge import judge_preferences as _judge_preferences
from selfrec_ft.dissection.self_preference import self_coin, self_preference_comparisons
from selfrec_ft.errors import UserError
from selfrec_ft.prompts.templates import load_preset, render_prompt
from selfrec_ft.scoring import scorer as scorer_mod
from selfrec_ft.scoring.engine import ScoreResult
from selfrec_ft.scoring.scorer import Scorer


def judge_preferences(model, tok, pairs, **scorer_kwargs):
    """The judge's preferences through a Scorer over the loaded model."""
    return _judge_preferences(Scorer(model, tok, **scorer_kwargs), pairs)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sharp_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with a sharpened output layer (option probabilities far from uniform), saved."""
    from selfrec_ft.models.loading import load_model

    model, tok = load_model(tiny_model_dir, device="cpu")
    with torch.no_grad():
        model.lm_head.weight.mul_(25.0)
    out = tmp_path_factory.mktemp("judge") / "sharp"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sharp(sharp_dir):
    from selfrec_ft.models.loading import load_model

    return load_model(sharp_dir, device="cpu")


@pytest.fixture(scope="module")
def adapter_dir(sharp_dir, tmp_path_factory):
    """A LoRA adapter on the sharpened model with random, non-zero A and B (a stand-in fine-tune)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(str(sharp_dir))
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                     init_lora_weights=False)
    model = get_peft_model(base, cfg)
    assert all(float(p.detach().abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)
    out = tmp_path_factory.mktemp("judge") / "ft-adapter"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return write_corpus(synth_corpus("short", 8, seed=5), tmp_path_factory.mktemp("judge") / "corpus")


def lone_probs(model, ids: list[int], option_ids: dict[str, int]) -> dict[str, float]:
    """Reference: one plain forward pass of the prompt alone, normalised over the options by hand."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    p = torch.softmax(logits, dim=-1)
    raw = {o: float(p[t]) for o, t in option_ids.items()}
    mass = sum(raw.values())
    return {o: v / mass for o, v in raw.items()}


def lone_preference(model, tok, article, r1, r2, max_length=None) -> float:
    """½[p̂_fwd("1") + p̂_bwd("2")] from two lone forward passes. With ``max_length`` the article is
    cut to the most words with which both orders fit (a plain loop over word counts)."""
    tmpl = load_preset("panickssery2024").task("pairwise-preference")
    if max_length is not None:
        words = article.split(" ")
        for n in range(len(words), -1, -1):
            cut = " ".join(words[:n])
            if all(len(render_prompt(tok, tmpl, None, article=cut, summary1=a, summary2=b).input_ids) + 1
                   <= max_length for a, b in ((r1, r2), (r2, r1))):
                article = cut
                break
    fwd = render_prompt(tok, tmpl, None, article=article, summary1=r1, summary2=r2)
    bwd = render_prompt(tok, tmpl, None, article=article, summary1=r2, summary2=r1)
    return 0.5 * (lone_probs(model, fwd.input_ids, fwd.option_ids)["1"]
                  + lone_probs(model, bwd.input_ids, bwd.option_ids)["2"])


def corpus_pairs(corpus_dir, n_articles=3):
    c = load_corpus(corpus_dir)
    pairs = []
    for a in c.articles[:n_articles]:
        lead, human = c.summary(a.id, "lead"), c.summary(a.id, "human")
        pairs.append({"article": a.text, "response_1": lead, "response_2": human})
        pairs.append({"article": a.text, "response_1": human, "response_2": lead})
    return pairs


# ----------------------------------------------------------------------------- judging


def test_judge_preferences_equals_lone_forward_passes(sharp, corpus_dir, monkeypatch):
    model, tok = sharp
    pairs = corpus_pairs(corpus_dir)
    seen = []
    real = scorer_mod.score_requests
    monkeypatch.setattr(scorer_mod, "score_requests", lambda m, reqs, **kw: seen.extend(reqs) or real(m, reqs, **kw))
    got = judge_preferences(model, tok, pairs, batch_size=3)
    want = [lone_preference(model, tok, p["article"], p["response_1"], p["response_2"]) for p in pairs]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # a random model mostly answers by position, but its labels are still far above rounding
    assert min(abs(w - 0.5) for w in want) > 20e-6
    # both orders of every pair (and all pairs of one article) form one engine group
    assert len(seen) == 2 * len(pairs)
    assert len({r.group for r in seen}) == len(pairs) // 2
    # swapping the responses swaps the preference (pairs 2k and 2k+1 are each other's swap)
    np.testing.assert_allclose(np.add(got[0::2], got[1::2]), 1.0, rtol=0, atol=1e-6)


def test_long_articles_are_shortened_alike_for_both_orders(sharp, corpus_dir):
    model, tok = sharp
    pairs = corpus_pairs(corpus_dir, n_articles=2)[:2]
    tmpl = load_preset("panickssery2024").task("pairwise-preference")
    full = len(render_prompt(tok, tmpl, None, article=pairs[0]["article"], summary1=pairs[0]["response_1"],
                             summary2=pairs[0]["response_2"]).input_ids)
    max_length = full - 15
    js = judge_pairs(Scorer(model, tok, max_length=max_length), pairs, progress=False)
    assert all(j.shortened for j in js)
    want = [lone_preference(model, tok, p["article"], p["response_1"], p["response_2"], max_length) for p in pairs]
    np.testing.assert_allclose([j.prob for j in js], want, rtol=0, atol=1e-6)


def test_labels_ties_and_invalid_pairs():
    assert label_preference(0.7) == 1 and label_preference(0.3) == 0
    assert label_preference(0.5) is None and label_preference(0.5 + TIE_TOLERANCE / 2) is None
    assert label_preference(0.5 + 10 * TIE_TOLERANCE) == 1
    assert label_preference(float("nan")) is None
    assert [drop_reason(p) for p in (0.9, 0.5, float("nan"))] == [None, "tie", "invalid"]


def test_identical_responses_tie_and_zero_mass_is_invalid(sharp, corpus_dir, monkeypatch):
    model, tok = sharp
    pairs = corpus_pairs(corpus_dir, n_articles=2)
    same = {**pairs[0], "response_2": pairs[0]["response_1"]}
    probs = judge_preferences(model, tok, [same, pairs[2]])
    assert drop_reason(probs[0]) == "tie" and drop_reason(probs[1]) is None

    real = scorer_mod.score_requests

    def zero_mass_first(m, reqs, **kw):
        res = real(m, reqs, **kw)
        res[0] = ScoreResult(probs={"1": 0.0, "2": 0.0}, p_hat=None, option_mass=0.0)
        return res

    monkeypatch.setattr(scorer_mod, "score_requests", zero_mass_first)
    js = judge_pairs(Scorer(model, tok), pairs[2:4], progress=False)
    assert math.isnan(js[0].prob) and not js[0].valid and js[0].mass_fwd == 0.0
    assert js[1].valid


# ----------------------------------------------------------------------------- comparisons


def test_self_coin_is_seeded_balanced_and_placed(tmp_path):
    flips = [self_coin(0, f"a{i}", o) for i in range(1000) for o in ("human", "x")]
    assert binomtest(flips.count(1), len(flips)).pvalue > 1e-3
    assert flips == [self_coin(0, f"a{i}", o) for i in range(1000) for o in ("human", "x")]
    assert flips != [self_coin(1, f"a{i}", o) for i in range(1000) for o in ("human", "x")]

    c = synth_corpus("short", 40, seed=2)
    ids = [a.id for a in c.articles]
    comps = self_preference_comparisons(c, "lead", None, ids, seed=7)
    assert len(comps) == 40 and {r["other_source"] for r in comps} == {"human"}
    positions = [r["self_position"] for r in comps]
    assert 1 in positions and 2 in positions
    assert positions == [r["self_position"] for r in self_preference_comparisons(c, "lead", None, ids, seed=7)]
    # a subset of articles gets the same coins (they do not depend on the run's other articles)
    sub = self_preference_comparisons(c, "lead", ["human"], ids[5:9], seed=7)
    assert [r["self_position"] for r in sub] == positions[5:9]
    for r in comps:
        own, other = c.summary(r["article_id"], "lead"), c.summary(r["article_id"], "human")
        pos = r["self_position"]
        assert (r["response_1"], r["response_2"]) == ((own, other) if pos == 1 else (other, own))
        assert r["features"] == {**comparison_features(r["response_1"], r["response_2"]),
                                 "self": 1 if pos == 1 else -1}
        assert r["article"] == c.article(r["article_id"]).text
    with pytest.raises(UserError, match="unknown source"):
        self_preference_comparisons(c, "lead", ["nobody"], ids)
    with pytest.raises(UserError, match="cannot also be an other"):
        self_preference_comparisons(c, "lead", ["lead"], ids)


def test_parse_judge(tmp_path):
    d = tmp_path / "my-adapter"
    d.mkdir()
    assert parse_judge(str(d)) == ("my-adapter", str(d))
    assert parse_judge(str(d) + "/") == ("my-adapter", str(d) + "/")
    assert parse_judge(f"ft={d}") == ("ft", str(d))
    with pytest.raises(UserError, match="not usable as a judge name"):
        parse_judge(f"={d}")


# ----------------------------------------------------------------------------- CLI


def read_rows(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_cli_self_preference_base_vs_adapter(sharp, sharp_dir, adapter_dir, corpus_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["dissect", "--self-preference", "--corpus", str(corpus_dir), "--self-source", "lead",
               "--skip-first", "2", "--limit", "6", "--judge", f"base={sharp_dir}", "--judge", str(adapter_dir),
               "--out", str(out), "--no-progress", "--batch-size", "8"])
    assert rc == 0
    assert "Self-preference dissection" in capsys.readouterr().out
    comp = json.loads((out / "comparison.json").read_text())
    names = [e["name"] for e in comp["judges"]]
    assert names == ["base", "ft-adapter"] and comp["base"] == "base"
    assert comp["n_comparisons"] == 6 and comp["others"] == ["human"]

    corpus = load_corpus(corpus_dir)
    held = [a.id for a in corpus.articles[2:8]]
    rows = {}
    for e in comp["judges"]:
        report = json.loads((out / e["name"] / "report.json").read_text())
        assert "self" in report["properties"]
        assert e["self"] == report["properties"]["self"]
        rows[e["name"]] = r = read_rows(out / e["name"] / "comparisons.jsonl")
        dropped = read_rows(out / e["name"] / "dropped.jsonl")
        assert e["n_labelled"] == len(r) and e["ties"] + e["invalid"] == len(dropped)
        assert len(r) + len(dropped) == 6 and {x["article_id"] for x in r + dropped} == set(held)
        # the raw self-preference rate, by a plain loop over the labelled comparisons
        won = sum((x["preferred"] == 1) == (x["self_position"] == 1) for x in r)
        assert e["self_preference_rate"]["mean"] == pytest.approx(won / len(r))
        lo, hi = e["self_preference_rate"]["ci95"]
        assert lo <= won / len(r) <= hi
        # the model-implied self-preference with and without w_self, by a plain loop
        w = {k: v["weight"] for k, v in report["properties"].items()}
        full = attr = 0.0
        for x in r:
            s = 1 if x["self_position"] == 1 else -1
            z = sum(w.get(k, 0.0) * v for k, v in x["features"].items())
            z_attr = z - w["self"] * x["features"]["self"]
            full += 1 / (1 + math.exp(-s * z))
            attr += 1 / (1 + math.exp(-s * z_attr))
        imp = e["implied_self_preference"]
        assert imp["full"] == pytest.approx(full / len(r)) and imp["attributes_only"] == pytest.approx(attr / len(r))
        assert (out / e["name"] / "report.md").is_file()

    # the base judge's labels are the engine's preferences on the same pairs
    model, tok = sharp
    base_rows = rows["base"]
    probs = judge_preferences(model, tok, base_rows)
    assert [x["judge_prob"] for x in base_rows] == pytest.approx(probs, abs=1e-6)
    assert [x["preferred"] for x in base_rows] == [int(p > 0.5) for p in probs]
    # the adapter changes the judge, on the very same comparisons
    ft_rows = {x["article_id"]: x for x in rows["ft-adapter"]}
    common = [x for x in base_rows if x["article_id"] in ft_rows]
    assert all(x["features"] == ft_rows[x["article_id"]]["features"] for x in common)
    assert max(abs(x["judge_prob"] - ft_rows[x["article_id"]]["judge_prob"]) for x in common) > 1e-4

    change = comp["changes"][0]
    base, ft = comp["judges"]
    assert change["judge"] == "ft-adapter" and change["base"] == "base"
    assert change["self_score"] == pytest.approx(ft["self"]["score"] - base["self"]["score"])
    assert change["self_preference_rate"]["delta"] == pytest.approx(
        ft["self_preference_rate"]["mean"] - base["self_preference_rate"]["mean"])
    md = (out / "comparison.md").read_text()
    assert "| base |" in md and "| ft-adapter |" in md and "Change from base" in md
    import matplotlib.image

    assert matplotlib.image.imread(out / "comparison.png").shape[0] > 100


def test_cli_comparisons_with_judge(sharp, sharp_dir, corpus_dir, tmp_path, capsys):
    model, tok = sharp
    pairs = corpus_pairs(corpus_dir, n_articles=2)
    f = tmp_path / "c.jsonl"
    lines = [
        {"features": {"relevant": 1, "lengthy": -1}, "preferred": 1},
        {"features": {"lengthy": 1, "self": 1}, **pairs[0]},
        {"features": {"self": -1}, **pairs[2], "note": "kept"},
        {"features": {"lengthy": 1}, **{**pairs[1], "response_2": pairs[1]["response_1"]}},  # a tie
    ]
    f.write_text(json.dumps(lines[0]) + "\n\n" + "\n".join(json.dumps(x) for x in lines[1:]) + "\n")
    out = tmp_path / "out"
    assert main(["dissect", "--comparisons", str(f), "--judge", str(sharp_dir), "--out", str(out),
                 "--no-progress"]) == 0
    assert "judged 3 lines (1 ties, 0 invalid dropped)" in capsys.readouterr().out
    rows = read_rows(out / "comparisons.jsonl")
    assert rows[0] == lines[0]
    probs = [lone_preference(model, tok, p["article"], p["response_1"], p["response_2"]) for p in (pairs[0], pairs[2])]
    assert [r["preferred"] for r in rows[1:]] == [int(p > 0.5) for p in probs]
    assert [r["line"] for r in rows[1:]] == [3, 4] and rows[2]["note"] == "kept"
    dropped = read_rows(out / "dropped.jsonl")
    assert [(d["line"], d["dropped"]) for d in dropped] == [(5, "tie")]
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 3 and {"relevant", "lengthy", "self"} <= set(report["properties"])
    summary = json.loads((out / "judge.json").read_text())
    assert (summary["judged"], summary["ties"], summary["kept"]) == (3, 1, 3)


# ----------------------------------------------------------------------------- errors


@pytest.fixture
def run_err(capsys):
    def run(argv):
        capsys.readouterr()
        rc = main(["dissect", *argv])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and err.startswith("error: "), err
        return err

    return run


def test_comparisons_with_judge_errors_name_file_and_line(sharp_dir, tmp_path, run_err):
    f = tmp_path / "c.jsonl"
    out = tmp_path / "out"
    good = {"features": {"lengthy": 1}, "article": "a", "response_1": "x", "response_2": "y"}
    f.write_text(json.dumps(good) + "\n" + json.dumps({"features": {"lengthy": 1}, "article": "a",
                                                        "response_1": "x"}) + "\n")
    err = run_err(["--comparisons", str(f), "--judge", str(sharp_dir), "--out", str(out)])
    assert err.startswith(f"error: {f}:2: ") and 'missing field "response_2"' in err
    f.write_text(json.dumps(good) + "\n" + json.dumps({**good, "response_1": 3}) + "\n")
    assert 'field "response_1" must be str' in run_err(["--comparisons", str(f), "--judge", str(sharp_dir),
                                                         "--out", str(out)])
    # bad features are found before the model runs, at their own line
    f.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "features": {"lenghty": 1}}) + "\n")
    err = run_err(["--comparisons", str(f), "--judge", str(sharp_dir), "--out", str(out)])
    assert err.startswith(f"error: {f}:3: unknown property \"lenghty\"")
    # without --judge a line must carry "preferred"
    f.write_text(json.dumps(good) + "\n")
    assert 'missing field "preferred"' in run_err(["--comparisons", str(f), "--out", str(out)])
    assert not out.exists()
    assert "one --judge" in run_err(["--comparisons", str(f), "--judge", str(sharp_dir), "--judge",
                                     str(sharp_dir), "--out", str(out)])
    assert "model path not found" in run_err(["--comparisons", str(f), "--judge", str(tmp_path / "nope"),
                                              "--out", str(out)])


def test_self_preference_errors(sharp_dir, corpus_dir, tmp_path, run_err):
    out = str(tmp_path / "out")
    base = ["--self-preference", "--corpus", str(corpus_dir), "--self-source", "lead", "--out", out]
    assert "either --comparisons" in run_err(["--out", out])
    assert "either --comparisons" in run_err([*base, "--comparisons", "x.jsonl", "--judge", str(sharp_dir)])
    assert "needs --judge" in run_err(base)
    assert "needs --corpus" in run_err(["--self-preference", "--self-source", "lead", "--judge", str(sharp_dir),
                                        "--out", out])
    assert "two judges are named" in run_err([*base, "--judge", f"a={sharp_dir}", "--judge", f"a={sharp_dir}"])
    assert "model path not found" in run_err([*base, "--judge", f"a={tmp_path / 'nope'}"])
    assert "unknown source(s) nobody" in run_err([*base, "--judge", str(sharp_dir), "--others", "nobody"])
    assert "no articles to compare" in run_err([*base, "--judge", str(sharp_dir), "--skip-first", "99"])
    f = tmp_path / "c.jsonl"
    f.write_text('{"features": {"lengthy": 1}, "preferred": 1}\n')
    assert "--corpus, --self-source only apply with --self-preference" in run_err(
        ["--comparisons", str(f), "--corpus", str(corpus_dir), "--self-source", "lead", "--out", out])
