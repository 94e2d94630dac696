"""Import P1's public repository: corpus directories and the result files ``selfrec report`` reads.

P1 is Panickssery, Bowman & Feng, *LLM Evaluators Recognize and Favor Their Own Generations*
(NeurIPS 2024); its data is the repository github.com/ArjunPanickssery/self_recognition. From a
clone of it, :func:`import_p1` writes, for each dataset ``ds`` in ``xsum`` and ``cnn``:

* ``OUT/{ds}/``: a corpus directory (docs in :mod:`selfrec_ft.data.corpus`) made from
  ``articles/{ds}_train_articles.json`` (an object article id -> text; **its key order is P1's
  article order**, and the first N articles are the training articles of P1's N-article
  fine-tunes) and ``summaries/{ds}/{ds}_train_{human,llama,gpt35,gpt4,claude}_responses.json``
  (article id -> summary), as sources ``human``, ``llama2-7b-chat``, ``gpt35``, ``gpt4``,
  ``claude``. Every summary file must cover exactly the articles;
* ``OUT/results/{pairwise,individual_recognition,individual_score}/{ds}/NAME.jsonl``: P1's
  per-example result files ``results/{ds}/NAME.json``,
  ``individual_setting_results/recognition_results/{ds}/NAME.json`` and
  ``individual_setting_results/score_results/{ds}/NAME.json`` as JSON lines, one list item per
  line with every field kept, each checked with the reader of ``selfrec report --format p1``
  (:func:`selfrec_ft.data.p1_results.read_p1_file`). P1's pairwise files for the GPT-3.5 and GPT-4
  evaluators hold only argmax answers, no per-order probabilities: that reader refuses them, so
  they are skipped and listed.

Every input is checked before anything is written, and each file is written atomically (it
appears complete or not at all); a failed import into a new directory leaves no directory. A rerun into the same directory leaves
identical files alone and refuses to overwrite one whose content differs (an edited or extended
corpus, an import of another commit). ``OUT/p1_import.json``, written last, records the clone, its
commit and the counts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfrec_ft.data.corpus import Article, Corpus, check_corpus, holds_corpus, write_new_corpus
from selfrec_ft.errors import UserError
from selfrec_ft.jsonl import atomic_write_json, atomic_write_text
from selfrec_ft.data.p1_results import P1_PAIRWISE_FIELDS, P1_SOURCE_NAMES, read_p1_file

P1_REPOSITORY = "https://github.com/ArjunPanickssery/self_recognition"
P1_DATASETS = ("xsum", "cnn")
P1_SUMMARY_MODELS = ("human", "llama", "gpt35", "gpt4", "claude")
"""P1's names in its summary file names, in the corpus's source order."""
P1_RESULT_DIRS = {
    "pairwise": "results/{ds}",
    "individual_recognition": "individual_setting_results/recognition_results/{ds}",
    "individual_score": "individual_setting_results/score_results/{ds}",
}
"""Output kind -> P1's directory of per-example result files (``*.json``) for dataset ``ds``."""
P1_BASE_RESULT = "llama_results.json"
"""Base Llama-2-7b-chat's file: required in every result directory."""
RESULTS_DIR = "results"
MANIFEST = "p1_import.json"
SCRATCH_DIR = ".p1_import.tmp"


def articles_file(clone: str | os.PathLike, dataset: str) -> Path:
    return Path(clone) / "articles" / f"{dataset}_train_articles.json"


def summaries_file(clone: str | os.PathLike, dataset: str, model: str) -> Path:
    return Path(clone) / "summaries" / dataset / f"{dataset}_train_{model}_responses.json"


def _read_json(path: Path, check_duplicate_keys: bool = False) -> Any:
    if not path.is_file():
        raise UserError(f"file not found (expected in a clone of P1's repository, {P1_REPOSITORY})", path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path) from None
    duplicates: list[str] = []

    def pairs_hook(pairs):
        obj = {}
        for key, value in pairs:
            if key in obj:
                duplicates.append(key)
            obj[key] = value
        return obj

    try:
        obj = json.loads(text, object_pairs_hook=pairs_hook if check_duplicate_keys else None)
    except json.JSONDecodeError as exc:
        raise UserError(f"malformed JSON ({exc.msg} at column {exc.colno})", path, exc.lineno) from None
    if duplicates:
        raise UserError(f'duplicate key "{duplicates[0]}"', path)
    return obj


def _id_text_map(path: Path) -> dict[str, str]:
    """A P1 articles or summaries file: one JSON object, article id -> text, in P1's order."""
    obj = _read_json(path, check_duplicate_keys=True)
    if not isinstance(obj, dict):
        raise UserError(f"expected a JSON object mapping article id to text, got a {type(obj).__name__}", path)
    for key, value in obj.items():
        if not isinstance(value, str):
            raise UserError(f'the value of id "{key}" is {type(value).__name__}, not text', path)
    return obj


def _first(ids: list[str], k: int = 5) -> str:
    return ", ".join(ids[:k]) + (" ..." if len(ids) > k else "")


def read_p1_corpus(clone: str | os.PathLike, dataset: str) -> Corpus:
    """The corpus of ``dataset`` (``xsum`` or ``cnn``) from a clone of P1's repository: articles in
    P1's order, sources ``human``, ``llama2-7b-chat``, ``gpt35``, ``gpt4``, ``claude``."""
    if dataset not in P1_DATASETS:
        raise UserError(f"unknown P1 dataset {dataset!r}; expected one of {list(P1_DATASETS)}")
    art_path = articles_file(clone, dataset)
    texts = _id_text_map(art_path)
    if not texts:
        raise UserError("no articles", art_path)
    corpus = Corpus(articles=[Article(aid, text) for aid, text in texts.items()])
    for model in P1_SUMMARY_MODELS:
        path = summaries_file(clone, dataset, model)
        by_id = _id_text_map(path)
        missing = [aid for aid in texts if aid not in by_id]
        if missing:
            raise UserError(f"no summary for {len(missing)} of the {len(texts)} articles of {art_path.name}: "
                            f"{_first(missing)}", path)
        extra = [aid for aid in by_id if aid not in texts]
        if extra:
            raise UserError(f"summaries for {len(extra)} ids that are not in {art_path.name}: {_first(extra)}", path)
        corpus.add_summaries(P1_SOURCE_NAMES.get(model, model), {aid: by_id[aid] for aid in texts})
    return corpus


def _argmax_only(obj: dict) -> bool:
    """A pairwise row with argmax answers but no per-order probabilities (P1's GPT evaluators)."""
    return not any(f in obj for f in P1_PAIRWISE_FIELDS.values()) and "forward_detection" in obj


def result_files(clone: str | os.PathLike) -> list[tuple[str, str, Path]]:
    """``(kind, dataset, path)`` of every P1 result file to import, in a fixed order; a missing
    result directory or base Llama-2 file is an error."""
    out = []
    for kind, pattern in P1_RESULT_DIRS.items():
        for ds in P1_DATASETS:
            folder = Path(clone) / pattern.format(ds=ds)
            if not folder.is_dir():
                raise UserError(f"directory not found (expected in a clone of P1's repository, {P1_REPOSITORY})",
                                folder)
            if not (folder / P1_BASE_RESULT).is_file():
                raise UserError("file not found (base Llama-2-7b-chat's results)", folder / P1_BASE_RESULT)
            out += [(kind, ds, p) for p in sorted(folder.glob("*.json"))]
    return out


@dataclass
class P1Import:
    """What :func:`import_p1` wrote; :meth:`format` is the command's closing note."""

    clone: Path
    out: Path
    commit: str | None
    corpora: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The manifest: the same on a rerun that changed nothing (no write flags, no times)."""
        def strip(d):
            return {k: v for k, v in d.items() if k != "written"}

        return {"repository": P1_REPOSITORY, "clone": str(self.clone.resolve()), "commit": self.commit,
                "corpora": {ds: strip(c) for ds, c in self.corpora.items()},
                "results": [strip(r) for r in self.results], "skipped": list(self.skipped)}

    def format(self) -> str:
        commit = f" (commit {self.commit[:7]})" if self.commit else ""
        lines = [f"imported P1's repository {self.clone}{commit} into {self.out}"]
        for ds, c in self.corpora.items():
            sums = ", ".join(f"{src} {n}" for src, n in c["summaries"].items())
            lines.append(f"  {ds}: {c['articles']} articles in P1's order; summaries: {sums}; "
                         f"missing combinations: {c['missing']} -> {self.out / ds} "
                         f"({'written' if c['written'] else 'unchanged'})")
        kinds: dict[str, int] = {}
        for r in self.results:
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
        n_written = sum(r["written"] for r in self.results)
        lines.append(f"  results: {len(self.results)} files, {sum(r['rows'] for r in self.results)} rows "
                     f"({', '.join(f'{k} {n}' for k, n in kinds.items())}; written {n_written}, unchanged "
                     f"{len(self.results) - n_written}) -> {self.out / RESULTS_DIR}")
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} pairwise files with argmax answers only, no per-order "
                         f"probabilities (P1's GPT-3.5/GPT-4 evaluators: not readable by selfrec report): "
                         f"{_first(self.skipped, 3)}")
        base = self.out / RESULTS_DIR / "pairwise" / P1_DATASETS[0] / P1_BASE_RESULT.replace(".json", ".jsonl")
        lines += ["next:",
                  f"  selfrec report --format p1 {base}      # P1's base Llama-2-7b-chat figures",
                  ("  selfrec train --config recipes/llama2-7b-chat/xsum_lora.yaml   # the recipes read "
                   "data/p1/{xsum,cnn}")]
        return "\n".join(lines)


def clone_commit(clone: Path) -> str | None:
    """The clone's checked-out commit, when it is a git work tree and git is installed."""
    if not (clone / ".git").exists():
        return None
    try:
        r = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True,
                           timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def _stage_result(kind: str, ds: str, src: Path, clone: Path, out: Path, scratch: Path) -> dict | None:
    """Convert and check one result file into ``scratch`` (None: skipped, argmax answers only).

    The record's ``staged`` is the checked file to move into ``out`` (None: ``out`` already holds
    exactly this file); a different file already there is refused."""
    data = _read_json(src)
    if not isinstance(data, list):
        raise UserError(f"expected a JSON list of result objects, got a {type(data).__name__}", src)
    if not data:
        raise UserError("the result list is empty", src)
    for i, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            raise UserError(f"item {i} of the list is a {type(obj).__name__}, not a JSON object", src)
    if kind == "pairwise" and _argmax_only(data[0]):
        return None
    text = "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in data)
    rel = Path(RESULTS_DIR) / kind / ds / (src.stem + ".jsonl")
    record = {"file": rel.as_posix(), "from": src.relative_to(clone).as_posix(), "kind": kind, "dataset": ds,
              "rows": len(data), "staged": None}
    final = out / rel
    if final.exists():
        if final.read_text(encoding="utf-8") == text:
            return record
        raise UserError("exists with different content (edited, or imported from another version of P1's "
                        "repository); nothing was overwritten: import into a new directory", final)
    staged = scratch / rel
    atomic_write_text(staged, text)
    try:
        read_p1_file(staged, domain=ds)
    except UserError as exc:  # line N of the JSON lines is item N of P1's list
        raise UserError((f"item {exc.line}: " if exc.line else "") + exc.message, src) from None
    record["staged"] = staged
    return record


def import_p1(clone: str | os.PathLike, out: str | os.PathLike, progress: bool = True) -> P1Import:
    """Import a clone of P1's repository into ``out`` (see the module docstring).

    Every input is read and checked, and every result file converted into a scratch directory,
    before anything is written into ``out``; then the corpora are written and the checked result
    files moved into place, and the manifest written last."""
    from tqdm.auto import tqdm

    clone, out = Path(clone), Path(out)
    if not clone.is_dir():
        raise UserError(f"not a directory (clone P1's repository first: git clone {P1_REPOSITORY})", clone)
    if out.exists() and not out.is_dir():
        raise UserError("--out exists and is not a directory", out)
    corpora = {ds: read_p1_corpus(clone, ds) for ds in P1_DATASETS}
    plan = result_files(clone)
    for ds, corpus in corpora.items():
        holds_corpus(out / ds, corpus)  # refuses a different corpus before any work
    result = P1Import(clone=clone, out=out, commit=clone_commit(clone))
    created = not out.exists()
    scratch = out / SCRATCH_DIR
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        staged = []
        for kind, ds, src in tqdm(plan, desc="P1 result files", unit="file", disable=not progress):
            record = _stage_result(kind, ds, src, clone, out, scratch)
            if record is None:
                result.skipped.append(src.relative_to(clone).as_posix())
            else:
                staged.append(record)
        for ds, corpus in corpora.items():
            check = check_corpus(corpus)
            result.corpora[ds] = {"articles": check.n_articles, "summaries": check.summary_counts,
                                  "missing": sum(len(v) for v in check.missing.values()),
                                  "written": write_new_corpus(corpus, out / ds)}
        for record in staged:
            path = record.pop("staged")
            record["written"] = path is not None
            if path is not None:
                (out / record["file"]).parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, out / record["file"])
            result.results.append(record)
    except BaseException:
        if created:  # everything under it is ours: leave no half-made directory behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    atomic_write_json(out / MANIFEST, result.to_json())
    return result
