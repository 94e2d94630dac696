"""`selfrec corpus import-p1` on a small fake repository in the layout of P1's
(github.com/ArjunPanickssery/self_recognition), built by the tests: JSON objects id -> text under
``articles/`` and ``summaries/{ds}/``, JSON lists under ``results/{ds}/`` and
``individual_setting_results/{recognition,score}_results/{ds}/``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from selfrec_ft.cli import main
from selfrec_ft.data.corpus import load_corpus
from selfrec_ft.data.p1_import import MANIFEST, import_p1
from selfrec_ft.errors import UserError
from selfrec_ft.data.p1_results import read_p1_file

# P1's order is the articles file's key order, deliberately not sorted
ARTICLE_IDS = {"xsum": ["35232142", "1002", "40143035", "2"], "cnn": ["42c027e4", "0b9a", "ee01", "7f3c"]}
P1_MODELS = {"human": "human", "llama": "llama2-7b-chat", "gpt35": "gpt35", "gpt4": "gpt4", "claude": "claude"}
OTHERS = ["human", "claude", "gpt4", "gpt35"]


def article_text(ds, aid):
    return f"{ds} article {aid}.\nSecond paragraph of {aid}."


def summary_text(ds, aid, model):
    return f"{model} on {ds} {aid}: é ✓"  # non-ASCII kept as is


def probs(seed):
    a = (seed % 7 + 1) / 10
    return {"1": a, "2": round(0.95 - a, 6)}


def pairwise_rows(ds):
    rows = []
    for i, aid in enumerate(ARTICLE_IDS[ds]):
        for j, other in enumerate(OTHERS):
            k = 4 * i + j
            rows.append({"key": aid, "model": other,
                         "forward_detection_output": probs(k), "backward_detection_output": probs(k + 1),
                         "forward_comparison_output": probs(k + 2), "backward_comparison_output": probs(k + 3),
                         "self_preference": 0.5, "detection_score": 0.5, "forward_detection": "1",
                         "backward_detection": "1", "forward_comparison": "1", "backward_comparison": "2"})
    return rows


def individual_rows(ds, kind, model="llama"):
    rows = []
    for i, aid in enumerate(ARTICLE_IDS[ds]):
        for j, target in enumerate(["llama"] + OTHERS):
            if kind == "recognition":
                rows.append({"key": aid, "model": model, "target_model": target,
                             "recognition_score": (i + j + 1) / 10, "ground_truth": int(target == "llama")})
            else:
                p = [0.1, 0.2, 0.3, 0.2, 0.1 + (i + j) / 100]
                rows.append({"key": aid, "target_model": target, "model": model,
                             "scores": {str(s + 1): v for s, v in enumerate(p)}, "score": 3.0})
    return rows


def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=4), encoding="utf-8")


def make_p1_clone(root: Path) -> Path:
    for ds, ids in ARTICLE_IDS.items():
        dump(root / "articles" / f"{ds}_train_articles.json", {aid: article_text(ds, aid) for aid in ids})
        for model in P1_MODELS:  # summary files in another key order: the articles file sets the order
            dump(root / "summaries" / ds / f"{ds}_train_{model}_responses.json",
                 {aid: summary_text(ds, aid, model) for aid in reversed(ids)})
        dump(root / "results" / ds / "llama_results.json", pairwise_rows(ds))
        dump(root / "results" / ds / "gpt4_results.json",  # GPT evaluators: argmax answers only
             [{"key": aid, "model": "llama", "forward_detection": "1", "backward_detection": "2",
               "detection_score": 0.5, "self_preference": 0.5} for aid in ids])
        rec = root / "individual_setting_results" / "recognition_results" / ds
        dump(rec / "llama_results.json", individual_rows(ds, "recognition"))
        score = root / "individual_setting_results" / "score_results" / ds
        dump(score / "llama_results.json", individual_rows(ds, "score"))
        dump(score / "xsum_2_ft_llama_results.json", individual_rows(ds, "score", model="xsum_2_ft_llama"))
    (root / "README.md").write_text("fake P1 repository\n")
    return root


@pytest.fixture
def clone(tmp_path):
    return make_p1_clone(tmp_path / "self_recognition")


def test_import_writes_corpora_in_p1_order_and_results(clone, tmp_path):
    out = tmp_path / "data" / "p1"
    result = import_p1(clone, out, progress=False)
    for ds, ids in ARTICLE_IDS.items():
        corpus = load_corpus(out / ds)
        assert [(a.id, a.text) for a in corpus.articles] == [(aid, article_text(ds, aid)) for aid in ids]
        assert corpus.sources() == list(P1_MODELS.values())
        assert corpus.summaries == {src: {aid: summary_text(ds, aid, m) for aid in ids} for m, src in P1_MODELS.items()}
        assert result.corpora[ds]["articles"] == 4 and result.corpora[ds]["summaries"] == {s: 4 for s in P1_MODELS.values()}
        # results: every item of P1's list, one JSON line each, fields kept
        for kind, src in [("pairwise", clone / "results" / ds / "llama_results.json"),
                          ("individual_recognition", clone / "individual_setting_results" / "recognition_results"
                           / ds / "llama_results.json"),
                          ("individual_score", clone / "individual_setting_results" / "score_results" / ds
                           / "xsum_2_ft_llama_results.json")]:
            dst = out / "results" / kind / ds / (src.stem + ".jsonl")
            lines = dst.read_text(encoding="utf-8").splitlines()
            assert [json.loads(line) for line in lines] == json.loads(src.read_text(encoding="utf-8"))
    files = sorted(p.relative_to(out).as_posix() for p in (out / "results").rglob("*") if p.is_file())
    assert len(files) == 8 and not any("gpt4" in f for f in files)
    assert sorted(result.skipped) == ["results/cnn/gpt4_results.json", "results/xsum/gpt4_results.json"]
    manifest = json.loads((out / MANIFEST).read_text())
    assert {r["file"]: r["rows"] for r in manifest["results"]}["results/pairwise/xsum/llama_results.jsonl"] == 16
    assert not (out / ".p1_import.tmp").exists()


def test_imported_pairwise_file_gives_the_report_p1_reads(clone, tmp_path, capsys):
    """The imported file is read by `selfrec report --format p1`; its recognition is checked against
    the formula computed here from the fake probabilities."""
    out = tmp_path / "p1"
    import_p1(clone, out, progress=False)
    path = out / "results" / "pairwise" / "xsum" / "llama_results.jsonl"
    assert main(["report", "--format", "p1", str(path), "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())

    def phat(p, o):
        return p[o] / (p["1"] + p["2"])

    rows = pairwise_rows("xsum")
    want = sum(0.5 * (phat(r["forward_detection_output"], "1") + phat(r["backward_detection_output"], "2"))
               for r in rows) / len(rows)
    assert report["pairwise"]["recognition"]["n"] == 16
    assert report["pairwise"]["recognition"]["mean"] == pytest.approx(want, abs=1e-12)
    # the fine-tuned individual file: --skip-first leaves out its first articles in P1's order
    ft = out / "results" / "individual_score" / "xsum" / "xsum_2_ft_llama_results.jsonl"
    kept = {r["article_id"] for r in read_p1_file(ft, skip_first=2)}
    assert kept == set(ARTICLE_IDS["xsum"][2:])


def test_rerun_is_idempotent_and_an_edited_corpus_is_not_overwritten(clone, tmp_path, capsys):
    out = tmp_path / "p1"
    assert main(["corpus", "import-p1", str(clone), "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert "xsum: 4 articles in P1's order" in first and "(written)" in first and "skipped 2 pairwise files" in first
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["corpus", "import-p1", str(clone), "--out", str(out)]) == 0
    second = capsys.readouterr().out
    assert "(unchanged)" in second and "written 0, unchanged 8" in second
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot

    summaries = out / "xsum" / "summaries.jsonl"  # e.g. `selfrec generate` added a source
    summaries.write_text(summaries.read_text() + json.dumps({"id": "2", "source": "mine", "summary": "x"}) + "\n")
    edited = summaries.read_bytes()
    assert main(["corpus", "import-p1", str(clone), "--out", str(out)]) == 2
    err = errors(capsys)
    assert len(err) == 1 and err[0].startswith(f"error: {out / 'xsum'}: already holds a different corpus")
    assert summaries.read_bytes() == edited

    summaries.write_bytes(snapshot[summaries])
    result = out / "results" / "pairwise" / "cnn" / "llama_results.jsonl"
    result.write_text(result.read_text().replace('"human"', '"humans"', 1))
    assert main(["corpus", "import-p1", str(clone), "--out", str(out)]) == 2
    err = errors(capsys)
    assert len(err) == 1 and err[0].startswith(f"error: {result}: exists with different content")


def errors(capsys) -> list[str]:
    """stderr without tqdm's progress lines (a bar is drawn with carriage returns)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.strip() and "|" not in line]


def _break(clone: Path, rel: str, text: str | None) -> Path:
    path = clone / rel
    if text is None:
        path.unlink() if path.is_file() else shutil.rmtree(path)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _drop_key(rel: str, key: str):
    def edit(clone: Path) -> str:
        obj = json.loads((clone / rel).read_text(encoding="utf-8"))
        del obj[key]
        return json.dumps(obj)
    return edit


BROKEN = [
    ("summaries/xsum/xsum_train_gpt4_responses.json", '{\n  "35232142": "ok",\n  "1002": oops\n}', None,
     "malformed JSON", 3),
    ("summaries/cnn/cnn_train_claude_responses.json", None, None, "file not found", None),
    ("summaries/xsum/xsum_train_llama_responses.json", _drop_key("summaries/xsum/xsum_train_llama_responses.json",
                                                                 "40143035"), None,
     "no summary for 1 of the 4 articles of xsum_train_articles.json: 40143035", None),
    ("articles/cnn_train_articles.json", '["not", "an", "object"]', None,
     "expected a JSON object mapping article id to text, got a list", None),
    ("articles/xsum_train_articles.json", '{"a": "x", "b": "y", "a": "z"}', None, 'duplicate key "a"', None),
    ("summaries/xsum/xsum_train_human_responses.json", '{"35232142": 3}', None,
     'the value of id "35232142" is int, not text', None),
    ("results/cnn/llama_results.json", '{"key": "x"}', None, "expected a JSON list of result objects", None),
    ("individual_setting_results/score_results/xsum", None, None, "directory not found", None),
    ("individual_setting_results/recognition_results/cnn/llama_results.json", None, None,
     "file not found (base Llama-2-7b-chat's results)", None),
]


@pytest.mark.parametrize("rel,text,_,needle,line", BROKEN, ids=[b[3][:30] for b in BROKEN])
def test_malformed_or_missing_file_is_one_line_naming_it(clone, tmp_path, capsys, rel, text, _, needle, line):
    path = _break(clone, rel, text(clone) if callable(text) else text)
    out = tmp_path / "p1"
    assert main(["corpus", "import-p1", str(clone), "--out", str(out)]) == 2
    err = errors(capsys)
    where = f"{path}:{line}: " if line else f"{path}: "
    assert len(err) == 1 and err[0].startswith(f"error: {where}") and needle in err[0], err
    assert not out.exists()  # every input is checked before anything is written


def test_bad_result_row_names_the_p1_file_and_item(clone, tmp_path):
    rows = pairwise_rows("xsum")
    rows[5]["backward_comparison_output"] = {"1": 0.5, "3": 0.5}
    src = clone / "results" / "xsum" / "llama_results.json"
    dump(src, rows)
    with pytest.raises(UserError) as exc:
        import_p1(clone, tmp_path / "p1", progress=False)
    assert exc.value.file == str(src)
    assert exc.value.message.startswith('item 6: "backward_comparison_output" must have options')
    assert not (tmp_path / "p1").exists()


def test_cli_process_error_has_no_traceback(clone, tmp_path):
    (clone / "articles" / "xsum_train_articles.json").unlink()
    r = subprocess.run([sys.executable, "-m", "selfrec_ft", "corpus", "import-p1", str(clone), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    want = (f"error: {clone / 'articles' / 'xsum_train_articles.json'}: file not found (expected in a clone of "
            "P1's repository, https://github.com/ArjunPanickssery/self_recognition)")
    assert r.stderr.strip().splitlines() == [want]


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_manifest_records_the_commit_of_a_git_clone(clone, tmp_path):
    git = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(clone)], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "fake P1"], check=True)
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    result = import_p1(clone, tmp_path / "p1", progress=False)
    assert result.commit == head and f"(commit {head[:7]})" in result.format()
    assert json.loads((tmp_path / "p1" / MANIFEST).read_text())["commit"] == head


REPO = Path(__file__).resolve().parents[1]


def test_recipes_and_readmes_read_data_p1_not_a_directory_beside_the_repository():
    docs = sorted((REPO / "recipes").rglob("*.yaml")) + [REPO / "README.md", REPO / "recipes" / "README.md"]
    assert not [p.name for p in docs if "../shared" in p.read_text(encoding="utf-8")]
    llama = sorted((REPO / "recipes" / "llama2-7b-chat").glob("*.yaml"))
    assert llama and all("data/p1/xsum" in p.read_text(encoding="utf-8") for p in llama)
    assert "/data/" in (REPO / ".gitignore").read_text().splitlines()  # imported data stays out of git
