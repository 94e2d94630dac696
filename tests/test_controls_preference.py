"""Preference controls of issue 23: the question-following gap (better vs worse question) and
quality-aware self-preference (harmful / justified, DBG gap), each checked against an independent
computation written here; ROUGE-L against a longest-common-subsequence count; the verdicts; the
worse question through `selfrec eval` and `selfrec report`."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from selfrec_ft.defaults import WORSE_QUESTION_TASK
from selfrec_ft.errors import UserError
from selfrec_ft.scoring.controls_preference import (
    add_preference_controls,
    quality_aware,
    question_following,
    render_controls,
)
from selfrec_ft.scoring.metrics import compute_report
from selfrec_ft.scoring.quality import QualityReference, file_quality, rouge_quality

OTHERS = ("b", "c")


def _row(task, aid, other, order, p1, p2, inverted=False):
    """A pairwise row as items.build_items writes it: the self summary in position 1 when forward;
    ``self_option`` is the option that favours the self summary (swapped for the worse question)."""
    fwd = order == "forward"
    self_pos = 1 if fwd else 2
    self_option = str(3 - self_pos) if inverted else str(self_pos)
    return {"task": task, "article_id": aid, "other_source": other, "order": order, "self_source": "me",
            "self_option": self_option, "probs": {"1": p1, "2": p2}}


def judge_rows(n_articles, pick_self_better, pick_self_worse, seed=0, noise=0.15):
    """Rows of a judge that names the self summary with probability ~``pick_self_better`` when asked
    "better" and ~``pick_self_worse`` when asked "worse" (per row, with noise), both orders."""
    rng = random.Random(seed)
    rows = []
    for a in range(n_articles):
        for other in OTHERS:
            for task, target in (("pairwise-preference", pick_self_better), (WORSE_QUESTION_TASK, pick_self_worse)):
                for order in ("forward", "backward"):
                    q = min(0.99, max(0.01, target + rng.uniform(-noise, noise)))  # P(names the self summary)
                    mass = rng.uniform(0.3, 0.9)
                    p_pos1 = q if order == "forward" else 1 - q
                    rows.append(_row(task, f"a{a}", other, order, p_pos1 * mass, (1 - p_pos1) * mass,
                                     inverted=task == WORSE_QUESTION_TASK))
    return rows


def independent_pairs(rows):
    """{(article, other): (P(self named | better), P(self named | worse))} computed from the raw
    probabilities: the option showing the self summary is "1" forward and "2" backward, whatever the
    question; normalised over the two options, the two orders averaged."""
    named = {}
    for r in rows:
        pos = "1" if r["order"] == "forward" else "2"
        p = r["probs"][pos] / (r["probs"]["1"] + r["probs"]["2"])
        named.setdefault((r["article_id"], r["other_source"], r["task"]), []).append(p)
    out = {}
    for (aid, other, task), ps in named.items():
        assert len(ps) == 2
        key = (aid, other)
        b, w = out.get(key, (None, None))
        if task == "pairwise-preference":
            b = sum(ps) / 2
        else:
            w = sum(ps) / 2
        out[key] = (b, w)
    return out


def cluster_bootstrap(values, clusters, n=4000, seed=1):
    """A plain article bootstrap of the mean (ratio of drawn sums to drawn counts), 95% percentile."""
    rng = np.random.default_rng(seed)
    keys = sorted(set(clusters))
    sums = np.array([sum(v for v, c in zip(values, clusters) if c == k) for k in keys])
    counts = np.array([sum(1 for c in clusters if c == k) for k in keys])
    draws = rng.integers(0, len(keys), size=(n, len(keys)))
    means = sums[draws].sum(1) / counts[draws].sum(1)
    return np.percentile(means, [2.5, 97.5])


def test_question_following_gap_matches_an_independent_computation():
    rows = judge_rows(30, 0.75, 0.45, seed=3)
    qf = question_following(rows, seed=0, n_resamples=2000)
    pairs = independent_pairs(rows)
    better = [b for b, _ in pairs.values()]
    worse = [w for _, w in pairs.values()]
    gaps = [b - w for b, w in pairs.values()]
    assert qf["gap"]["n"] == len(pairs) == 60 and qf["gap"]["n_articles"] == 30
    assert qf["better"]["mean"] == pytest.approx(np.mean(better), abs=1e-12)
    assert qf["worse"]["mean"] == pytest.approx(np.mean(worse), abs=1e-12)
    assert qf["gap"]["mean"] == pytest.approx(np.mean(gaps), abs=1e-12)
    lo, hi = cluster_bootstrap(gaps, [a for a, _ in pairs])
    assert qf["gap"]["ci95"][0] == pytest.approx(lo, abs=0.02) and qf["gap"]["ci95"][1] == pytest.approx(hi, abs=0.02)
    b_only = [b for (a, o), (b, _) in pairs.items() if o == "b"]
    assert qf["by_source"]["b"]["better"]["mean"] == pytest.approx(np.mean(b_only), abs=1e-12)
    # the better question's block is the report's own preference score on the same pairs
    assert compute_report(rows)["pairwise"]["preference"]["mean"] == pytest.approx(qf["better"]["mean"], abs=1e-12)
    assert qf["following_share"] == pytest.approx(np.mean(gaps) / (2 * np.mean(better) - 1), abs=1e-12)


def test_verdicts_answer_copying_following_and_mostly_copying():
    copying = question_following(judge_rows(20, 0.9, 0.9, seed=1))
    assert copying["answer_copying"] is True
    lo, hi = copying["gap"]["ci95"]
    assert lo <= 0 <= hi and "answer-copying" in copying["verdict"] and "interval includes 0" in copying["verdict"]

    follower = question_following(judge_rows(20, 0.9, 0.1, seed=1))
    assert follower["answer_copying"] is False and follower["gap"]["ci95"][0] > 0.6
    assert "follows the question" in follower["verdict"]

    mostly = question_following(judge_rows(40, 0.9, 0.8, seed=2, noise=0.02))
    assert mostly["gap"]["ci95"][0] > 0 and mostly["answer_copying"] is True
    assert "mostly answer-copying" in mostly["verdict"]

    indifferent = question_following(judge_rows(20, 0.5, 0.5, seed=1, noise=0.0))
    assert indifferent["answer_copying"] is False and "no self-preference" in indifferent["verdict"]

    # a gap above 0 with self picked below chance under "better": no self-preference to follow
    slight = question_following(judge_rows(40, 0.42, 0.30, seed=4, noise=0.02))
    assert slight["gap"]["ci95"][0] > 0 and slight["better"]["ci95"][1] < 0.5
    assert slight["answer_copying"] is False
    assert slight["verdict"].startswith("no self-preference is shown")
    tiny = question_following(judge_rows(40, 0.5, 0.52, seed=4, noise=0.01))  # a tiny gap below 0 at chance
    assert tiny["gap"]["ci95"][1] < 0 and tiny["better"]["ci95"][0] <= 0.5 <= tiny["better"]["ci95"][1]
    assert tiny["verdict"].startswith("no self-preference is shown") and tiny["answer_copying"] is False
    assert "shift against the question" in tiny["verdict"]  # -0.02: not negligible
    always_1 = question_following(judge_rows(20, 0.5, 0.5 + 2e-6, seed=4, noise=1e-6))  # a gap of ~1e-6
    assert always_1["gap"]["ci95"][1] < 0 and "the gap is negligible" in always_1["verdict"]

    # named worse more often than better, and below chance under "better": a self-dispreference
    averse = question_following(judge_rows(20, 0.2, 0.8, seed=1))
    assert averse["gap"]["ci95"][1] < 0 and "disprefers its own summary" in averse["verdict"]
    contrary = question_following(judge_rows(20, 0.7, 0.9, seed=1))
    assert contrary["gap"]["ci95"][1] < 0 and contrary["better"]["ci95"][0] > 0.5
    assert "answers against the question" in contrary["verdict"]

    few = question_following(judge_rows(3, 0.9, 0.9))
    assert few["gap"]["ci95"] is None and "cannot be judged" in few["verdict"]


def test_report_gets_the_section_and_the_note_only_with_worse_rows():
    rows = judge_rows(12, 0.9, 0.9)
    report = add_preference_controls(compute_report(rows), rows)
    assert "question_following" in report and any("answer-copying" in n for n in report["notes"])
    text = "\n".join(render_controls(report, "##"))
    assert "## Question-following (better vs worse)" in text and "**Verdict:**" in text
    # compute_report ignores the worse rows: its preference is the better question's alone
    better_only = [r for r in rows if r["task"] == "pairwise-preference"]
    assert compute_report(rows)["pairwise"] == compute_report(better_only)["pairwise"]
    assert "question_following" not in add_preference_controls(compute_report(better_only), better_only)


def test_quality_aware_matches_an_independent_computation():
    rows = judge_rows(25, 0.7, 0.5, seed=5)
    rng = random.Random(9)
    scores = {}
    for a in range(25):
        for src in ("me", *OTHERS):
            scores[(f"a{a}", src)] = round(rng.uniform(0, 1), 1)  # rounded: some ties
    scores.pop(("a0", "c"))  # one pair without a quality
    qa = quality_aware(rows, QualityReference(scores, "test scores"), seed=0, n_resamples=2000)

    pairs = independent_pairs(rows)
    just, harm, dbg, gold_all, ties, missing = [], [], [], [], 0, 0
    for (aid, other), (b, _) in pairs.items():
        if (aid, other) not in scores:
            missing += 1
            continue
        qs, qo = scores[(aid, "me")], scores[(aid, other)]
        gold = 1.0 if qs > qo else 0.0 if qs < qo else 0.5
        ties += qs == qo
        (just if gold == 1 else harm if gold == 0 else []).append(b)
        dbg.append((b - gold, aid))
        gold_all.append(gold)
    assert ties > 0 and missing == qa["n_without_quality"] == 1
    assert (qa["n_self_better"], qa["n_self_worse"], qa["n_tied"]) == (len(just), len(harm), ties)
    assert qa["justified"]["mean"] == pytest.approx(np.mean(just), abs=1e-12)
    assert qa["harmful"]["mean"] == pytest.approx(np.mean(harm), abs=1e-12)
    assert qa["dbg"]["mean"] == pytest.approx(np.mean([d for d, _ in dbg]), abs=1e-12)
    assert qa["gold_self_better"]["mean"] == pytest.approx(np.mean(gold_all), abs=1e-12)
    lo, hi = cluster_bootstrap([d for d, _ in dbg], [a for _, a in dbg])
    assert qa["dbg"]["ci95"] == pytest.approx([lo, hi], abs=0.02)


def _rouge_l_f(ref: str, hyp: str) -> float:
    """ROUGE-L F1 from a longest-common-subsequence table (words without suffixes: no stemming)."""
    a, b = ref.lower().split(), hyp.lower().split()
    t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)):
            t[i + 1][j + 1] = t[i][j] + 1 if a[i] == b[j] else max(t[i][j + 1], t[i + 1][j])
    lcs = t[-1][-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(b), lcs / len(a)
    return 2 * p * r / (p + r)


def test_rouge_quality_is_rouge_l_against_the_reference_and_leaves_the_reference_out():
    from selfrec_ft.data.corpus import Article, Corpus

    texts = {"human": "the cat sat on a mat", "me": "a cat sat on the red mat", "b": "dog ran far"}
    corpus = Corpus(articles=[Article("x1", "an article")], summaries={s: {"x1": t} for s, t in texts.items()})
    q = rouge_quality(corpus, ["x1"], ["me", "b", "human"])
    assert q.of("x1", "me") == pytest.approx(_rouge_l_f(texts["human"], texts["me"]), abs=1e-12)
    assert q.of("x1", "b") == 0.0 and q.of("x1", "human") is None
    with pytest.raises(UserError):
        rouge_quality(corpus, ["x1"], ["me"], reference="nobody")


def test_quality_file_reads_gold_scores_and_errors_name_the_line(tmp_path):
    good = tmp_path / "q.jsonl"
    good.write_text('{"article_id": "a1", "source": "me", "rating": 4}\n{"id": 7, "source": "b", "rating": 2.5}\n')
    q = file_quality(good, "rating")
    assert q.of("a1", "me") == 4.0 and q.of("7", "b") == 2.5 and "rating" in q.description
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"article_id": "a1", "source": "me", "rating": 4}\n{"article_id": "a2", "source": "me"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: .*rating"):
        file_quality(bad, "rating")


@pytest.mark.usefixtures("one_torch_thread")
def test_selfrec_eval_scores_the_worse_question_by_default(tiny_model_dir, short_corpus_dir, tmp_path, capsys):
    from selfrec_ft.cli import main
    from selfrec_ft.jsonl import read_jsonl_rows

    base = ["eval", "--model", str(tiny_model_dir), "--corpus", str(short_corpus_dir), "--self-source", "lead",
            "--tasks", "pairwise-preference", "--skip-first", "6", "--n-resamples", "200", "--no-progress",
            "--prompt-preset", "compact"]
    assert main(base + ["--out", str(tmp_path / "on")]) == 0
    rows = read_jsonl_rows(tmp_path / "on" / "examples.jsonl")
    worse = [r for r in rows if r["task"] == WORSE_QUESTION_TASK]
    assert len(worse) == len(rows) / 2 == 12  # 6 articles x 1 other x 2 orders, under each question
    assert all(r["self_option"] == ("2" if r["order"] == "forward" else "1") for r in worse)
    report = json.loads((tmp_path / "on" / "report.json").read_text())
    assert report["question_following"]["gap"]["n"] == 6
    assert "Question-following" in (tmp_path / "on" / "report.md").read_text()
    assert main(base + ["--out", str(tmp_path / "off"), "--no-worse-question"]) == 0
    assert not any(r["task"] == WORSE_QUESTION_TASK for r in read_jsonl_rows(tmp_path / "off" / "examples.jsonl"))
    assert "question_following" not in json.loads((tmp_path / "off" / "report.json").read_text())
    capsys.readouterr()
    # `selfrec report` reads the worse rows back and shows the same gap
    assert main(["report", str(tmp_path / "on" / "examples.jsonl"), "--n-resamples", "200",
                 "--json", str(tmp_path / "rep.json")]) == 0
    assert "Question-following" in capsys.readouterr().out
    again = json.loads((tmp_path / "rep.json").read_text())
    assert again["question_following"]["gap"]["mean"] == pytest.approx(report["question_following"]["gap"]["mean"])


def _sweep_rows(rec, better, worse_named, domain, articles=12):
    """Rows of one evaluation whose pair scores are exact: recognition ``rec``, P(self named) ``better``
    when asked "better" and ``worse_named`` when asked "worse" (functions of the article index)."""
    rows = []
    for j in range(articles):
        for task, value, inverted in (("pairwise-recognition", rec, False), ("pairwise-preference", better, False),
                                      (WORSE_QUESTION_TASK, worse_named, True)):
            q = float(value(j))
            for order in ("forward", "backward"):
                p1 = q if order == "forward" else 1 - q
                rows.append({**_row(task, f"a{j}", "b", order, p1, 1 - p1, inverted=inverted), "domain": domain})
    return rows


def test_sweep_analysis_relates_recognition_to_the_question_following_preference(tmp_path):
    """Six runs whose preference copies recognition under both questions: the raw preference rises
    with recognition (supported) while the better − worse gap, small and unrelated to recognition,
    is not; per-run gaps and the gap's Pearson r match an independent computation."""
    from scipy import stats as sps

    from selfrec_ft.sweep.analysis import analyse_sweep

    rec = [0.52, 0.60, 0.68, 0.75, 0.83, 0.90]
    gap = [0.03, -0.02, 0.01, 0.04, -0.01, 0.02]
    runs = []
    for i, (r, g) in enumerate(zip(rec, gap)):
        ev = {}
        for dom in ("in_domain", "out_of_domain"):
            rows = _sweep_rows(lambda j: r + 0.004 * (j % 3), lambda j: r + 0.004 * (j % 3),
                               lambda j: r - g + 0.004 * (j % 3), dom)
            path = tmp_path / f"r{i}" / dom / "examples.jsonl"
            path.parent.mkdir(parents=True)
            path.write_text("".join(json.dumps(x) + "\n" for x in rows))
            ev[dom] = f"r{i}/{dom}/examples.jsonl"
        runs.append({"run_id": f"r{i}", "params": {"labels": "self"}, "status": "done", "error": None, "eval": ev})
    (tmp_path / "runs.json").write_text(json.dumps({"runs": runs}))
    a = analyse_sweep(tmp_path, n_resamples=300, plots=False)
    got = [x["domains"]["in_domain"]["question_following"]["mean"] for x in a["runs"]]
    assert got == pytest.approx(gap, abs=1e-9)
    raw, following = a["correlation"]["in_domain"], a["correlation_question_following"]["in_domain"]
    assert raw["supported"] is True and following["supported"] is False
    rec_means = [x["domains"]["in_domain"]["recognition"]["mean"] for x in a["runs"]]
    assert following["pearson"]["r"] == pytest.approx(sps.pearsonr(rec_means, gap).statistic, abs=1e-9)
    text = (tmp_path / "report.md").read_text()
    assert "question-following preference (better − worse gap): Not supported" in text
    assert "better − worse gap [95% CI]" in text


def test_hook_summary_training_report_and_checkpoint_table_show_the_gap(tmp_path):
    """The hook's summary of an answer-copying judge carries the gap and the verdict; the training
    report adds a gap column and says "answer-copying" for the final model; the eval-checkpoints table
    marks it ‡; hook_worse_question switches the question off."""
    from types import SimpleNamespace

    from selfrec_ft.defaults import HOOK_FILE
    from selfrec_ft.sweep.checkpoints import render_table_markdown
    from selfrec_ft.training.args import EvalHookArguments
    from selfrec_ft.training.hook import hook_specs, summarise
    from selfrec_ft.training.report import write_training_report

    rows = judge_rows(12, 0.9, 0.9)
    quality = QualityReference({(f"a{a}", s): float(s == "me") for a in range(12) for s in ("me", *OTHERS)}, "q")
    summary = summarise(add_preference_controls(compute_report(rows, n_resamples=300), rows, n_resamples=300,
                                                quality=quality))
    assert summary["quality_preference"]["justified"]["n"] == 24 and summary["quality_preference"]["harmful"]["n"] == 0
    qf = summary["question_following"]
    assert qf["answer_copying"] is True and qf["mean"] == pytest.approx(qf["better"] - qf["worse"])
    base = summarise(add_preference_controls(compute_report(judge_rows(12, 0.5, 0.5, noise=0.0)),
                                             judge_rows(12, 0.5, 0.5, noise=0.0)))
    records = [{"step": 0, "event": "start", "in_domain": base}, {"step": 8, "event": "end", "in_domain": summary}]
    (tmp_path / HOOK_FILE).write_text("".join(json.dumps(x) + "\n" for x in records))
    write_training_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "better − worse gap" in md and "final, in-domain: **answer-copying**" in md
    assert "Quality-aware self-preference (q)" in md and "| final | in-domain |" in md

    table = render_table_markdown([{"run": "r", "checkpoint": "final", "step": 8, "domain": "in_domain",
                                    "recognition": None, "preference": summary["preference"],
                                    "question_following": qf}])
    assert "better − worse gap [95% CI]" in table and " ‡ |" in table

    data = SimpleNamespace(self_source="me", others=["b"], prompt_preset="compact", n_articles=2, label_seed=0)
    on = EvalHookArguments(hook_in_domain="corpus")
    off = EvalHookArguments(hook_in_domain="corpus", hook_worse_question=False)
    assert hook_specs(on, data)[0].worse_question is True and hook_specs(off, data)[0].worse_question is False


def test_every_shipped_preset_has_the_worse_question_and_a_preset_without_it_is_one_line(tmp_path):
    from selfrec_ft.prompts.templates import available_presets
    from selfrec_ft.scoring.controls_preference import worse_template

    for name in available_presets():
        t = worse_template(name)
        assert t.inverted and t.measures == "pairwise-preference" and "worse" in t.user
    own = tmp_path / "mine.yaml"
    own.write_text("name: mine\ntasks:\n  pairwise-preference:\n    measures: pairwise-preference\n"
                   "    user: \"{summary1} {summary2} better?\"\n    options: ['1', '2']\n")
    with pytest.raises(UserError, match="no-worse-question"):
        worse_template(str(own))


JUDGE_PRESET = """name: tinyq
assistant_prefix: ''
tasks:
  pairwise-recognition:
    measures: pairwise-recognition
    user: "1: {summary1}\\n2: {summary2}\\nWhich did you write?"
    options: ['1', '2']
  pairwise-preference:
    measures: pairwise-preference
    user: "1: {summary1}\\n2: {summary2}\\nWhich is better?"
    options: ['1', '2']
  pairwise-preference-worse:
    measures: pairwise-preference
    user: "1: {summary1}\\n2: {summary2}\\nWhich is worse?"
    options: ['1', '2']
    inverted: true
"""


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_a_judge_trained_to_recognise_its_own_text_copies_the_answer(tiny_model_dir, tmp_path, capsys):
    """Done-when of issue 23: the tiny model, fine-tuned (SFT, full) to answer "which did you write?"
    on a self source with a visible mark ("Briefly, ..."), recognises its held-out summaries; asked
    "better" and "worse" it names its own summary alike, so the gap's interval includes 0 and the
    training report and `selfrec eval`'s report say so (short prompts keep it to ~120 steps)."""
    from trl import ModelConfig, SFTConfig

    from selfrec_ft.cli import main
    from selfrec_ft.data.corpus import write_corpus
    from selfrec_ft.data.synth import synth_corpus
    from selfrec_ft.training.args import EvalHookArguments, SelfRecDataArguments
    from selfrec_ft.training.sft import run_sft

    preset = tmp_path / "tinyq.yaml"
    preset.write_text(JUDGE_PRESET)
    corpus = synth_corpus("short", 20, seed=4)
    corpus.summaries["lead"] = {a: " ".join(t.split()[:6]) for a, t in corpus.summaries["lead"].items()}
    corpus.add_summaries("me", {a: "Briefly, " + " ".join(t.split()[:5]) for a, t in corpus.summaries["human"].items()})
    corpus_dir = write_corpus(corpus, tmp_path / "corpus")
    out = tmp_path / "judge"
    data = SelfRecDataArguments(corpus=str(corpus_dir), self_source="me", others="lead", n_articles=14,
                                prompt_preset=str(preset))
    train = SFTConfig(output_dir=str(out), use_cpu=True, bf16=False, activation_checkpointing=False, max_length=256,
                      per_device_train_batch_size=8, learning_rate=3e-3, lr_scheduler_type="constant", max_steps=120,
                      logging_steps=40, save_strategy="no", report_to="none", seed=0, disable_tqdm=True,
                      dataloader_num_workers=0)
    model = ModelConfig(model_name_or_path=str(tiny_model_dir), use_peft=False)
    hook = EvalHookArguments(hook_in_domain=str(corpus_dir), hook_limit=6, hook_batch_size=12,
                             hook_tasks="pairwise-recognition,pairwise-preference")
    run_sft(data, train, model, hook_args=hook, teardown=False)

    report = json.loads((out / "report.json").read_text())
    base, final = report["baseline"]["in_domain"], report["final"]["in_domain"]
    assert final["recognition"]["mean"] > base["recognition"]["mean"] + 0.25, (base, final)
    qf = final["question_following"]
    lo, hi = qf["ci95"]
    # the judge names its own summary under both questions: the gap is ~0 (a saturated judge can give
    # +0.001 [0.000, 0.002]); a judge that followed the question would show a gap near 2·(better − ½)
    assert qf["answer_copying"] and hi < 0.15 and abs(qf["better"] - qf["worse"]) < 0.15, qf
    assert qf["better"] > 0.75 and "answer-copying" in (out / "report.md").read_text()

    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--corpus", str(corpus_dir), "--self-source", "me", "--others", "lead",
                 "--tasks", "pairwise-recognition,pairwise-preference", "--prompt-preset", str(preset),
                 "--n-resamples", "500", "--no-progress", "--out", str(tmp_path / "eval")]) == 0
    ev = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert ev["meta"]["eval"]["articles"] == 6  # the held-out articles (the training ones skipped)
    gap = ev["question_following"]["gap"]
    assert ev["question_following"]["answer_copying"] and gap["ci95"][1] < 0.15
    assert gap["mean"] == pytest.approx(qf["mean"], abs=1e-6)
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "## Question-following (better vs worse)" in md and "answer-copying" in md
    assert "## Quality-aware self-preference" in md and ev["quality_preference"]["dbg"]["n"] == 6


def test_training_report_recomputes_a_hook_records_verdict_when_it_has_the_intervals(tmp_path):
    """The hook's flattened record keeps both questions' intervals, so the training report applies the
    current verdict rules; a record written before they were kept keeps its stored verdict."""
    from selfrec_ft.defaults import HOOK_FILE
    from selfrec_ft.training.hook import summarise
    from selfrec_ft.training.report import write_training_report

    rows = judge_rows(20, 0.5, 0.5 + 2e-6, seed=4, noise=1e-6)  # an always-"1" judge: a gap of ~1e-6
    qf = summarise(add_preference_controls(compute_report(rows), rows))["question_following"]
    assert qf["better_ci95"] is not None and qf["worse_ci95"] is not None
    stale = dict(qf, verdict="the self-preference follows the question (stale).", answer_copying=True)
    old = {k: v for k, v in stale.items() if k not in ("better_ci95", "worse_ci95")}
    recs = [{"step": s, "event": e, "in_domain": {"question_following": q}}
            for s, e, q in ((0, "start", old), (8, "end", stale))]
    (tmp_path / HOOK_FILE).write_text("".join(json.dumps(r) + "\n" for r in recs))
    report = write_training_report(tmp_path)
    final = report["final"]["in_domain"]["question_following"]
    assert final["verdict"] == question_following(rows)["verdict"] and "gap is negligible" in final["verdict"]
    assert final["answer_copying"] is False
    assert report["baseline"]["in_domain"]["question_following"]["verdict"].endswith("(stale).")
    assert "gap is negligible" in (tmp_path / "report.md").read_text()


def test_training_report_takes_an_older_records_better_interval_from_its_preference_block(tmp_path):
    """A hook record written before the hook kept the "better" interval still has the pairwise
    preference block, which measures the same pairs with the same bootstrap: when its mean and pair
    count are the record's, its interval gives the current verdict; when they differ, the stored one stays."""
    from selfrec_ft.defaults import HOOK_FILE
    from selfrec_ft.training.hook import summarise
    from selfrec_ft.training.report import write_training_report

    # "better" at chance, asked "worse" it names its own a little more often: a gap below 0 without self-preference
    rows = judge_rows(16, 0.5, 0.56, seed=5, noise=0.1)
    summary = summarise(add_preference_controls(compute_report(rows), rows))
    qf, pref = summary["question_following"], summary["preference"]
    assert qf["better_ci95"] == pref["ci95"]  # the same quantity, the same bootstrap
    truth = question_following(rows)["verdict"]
    assert truth.startswith("no self-preference is shown")
    old = {k: v for k, v in qf.items() if k not in ("better_ci95", "worse_ci95")}
    old.update(verdict="the judge answers against the question (stale).", answer_copying=False)
    other = dict(pref, mean=pref["mean"] + 0.01)  # not the "better" question's pairs
    recs = [{"step": 0, "event": "start", "in_domain": {"preference": other, "question_following": old}},
            {"step": 8, "event": "end", "in_domain": {"preference": pref, "question_following": old}}]
    (tmp_path / HOOK_FILE).write_text("".join(json.dumps(r) + "\n" for r in recs))
    report = write_training_report(tmp_path)
    assert report["final"]["in_domain"]["question_following"]["verdict"] == truth
    assert report["baseline"]["in_domain"]["question_following"]["verdict"].endswith("(stale).")
