"""Evaluate fine-tuned runs checkpoint by checkpoint, in-domain and out-of-domain (``eval-checkpoints``).

A *run directory* is an SFT ``output_dir`` (:func:`selfrec_ft.training.sft.run_sft`): it holds
``resolved_config.yaml`` and ``training_manifest.json`` (base model, self source, others, the
training articles, prompt preset), the final adapter or model, and ``checkpoint-<step>/`` dirs.
For every run this module evaluates, through :func:`selfrec_ft.scoring.evaluate.evaluate`:

* the untrained base model, once per distinct (base model, self source, others, preset) among the
  runs, on the in-domain articles after the largest ``n_articles`` of the runs sharing it;
* every complete ``checkpoint-*`` and the final adapter/model (a checkpoint saved at the final step
  holds the final weights: it is not scored twice, it reuses the final evaluation);

in two domains: ``in_domain`` (the training corpus order: the first ``n_articles`` articles are
skipped; an evaluated article that the manifest lists as trained on is an error) and
``out_of_domain`` (all articles), at most ``limit`` articles each.

Each (checkpoint, domain) evaluation has its own directory, ``RUN_DIR/eval/<checkpoint>/<domain>-<h>``
(``final`` for the final model; base models under ``base_root/<name>-<h>/``), where ``<h>`` hashes
the settings that change the numbers (corpus, skipped articles, limit, sources, preset, max_length,
dtype). :func:`evaluate` resumes a killed evaluation there; one whose ``report.json`` is present and
complete (same model, corpus, sources, number of articles, tasks) is not rerun but read back.

The results form one table, :func:`write_table` -> ``eval_checkpoints.json`` (a list of rows
``{run, checkpoint, step, domain, recognition {mean, ci95, n, accuracy, position_biased},
preference {...}, familiarity {...} if asked, examples, ...}``) and ``eval_checkpoints.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfrec_ft import markdown as md
from selfrec_ft.data.corpus import Corpus, load_corpus
from selfrec_ft.defaults import DEFAULT_PRESET, EXAMPLES_FILE, FAMILIARITY, MANIFEST_FILE, REPORT_JSON
from selfrec_ft.errors import UserError
from selfrec_ft.jsonl import atomic_write_json, atomic_write_text, read_jsonl_rows
from selfrec_ft.prompts.protocol import Protocol, manifest_preset, preset_name
from selfrec_ft.scoring.spec import EvalSpec

DOMAINS = ("in_domain", "out_of_domain")
from selfrec_ft.defaults import DEFAULT_HOOK_TASKS as DEFAULT_EVAL_TASKS  # noqa: E402
TABLE_JSON = "eval_checkpoints.json"
TABLE_MD = "eval_checkpoints.md"
EVAL_SUBDIR = "eval"
FINAL = "final"
BASE = "base"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
MEASURES = {"recognition": "pairwise-recognition", "preference": "pairwise-preference"}
KIND_HINTS = (("highlights", ("highlights", "cnn", "dailymail")), ("short", ("short", "xsum")))


# ----------------------------------------------------------------------------- run directories


@dataclass
class Checkpoint:
    """A model to evaluate: ``name`` is ``checkpoint-<step>``, ``final`` or the base model's name."""

    name: str
    step: int | None
    path: str


@dataclass
class RunDir:
    """What an SFT output directory says about its run (see the module docstring)."""

    path: Path
    name: str
    base_model: str
    self_source: str
    others: list[str] | None
    n_articles: int
    preset: str
    max_length: int | None
    dtype: str
    train_article_ids: frozenset[str]
    final_step: int | None
    final: Checkpoint | None
    checkpoints: list[Checkpoint]
    training_corpus: str | None = None
    hook_in_domain: str | None = None
    hook_out_of_domain: str | None = None


def has_weights(path: Path) -> bool:
    """A saved adapter or model (a checkpoint cut short by a kill has none)."""
    if (path / "adapter_config.json").is_file():
        return any(path.glob("adapter_model.*"))
    return (path / "config.json").is_file() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin")))


def _eval_dtype(dtype: Any) -> str:
    from selfrec_ft.models.loading import DTYPES

    return DTYPES[dtype] if isinstance(dtype, str) and dtype in DTYPES and DTYPES[dtype] != "auto" else "float32"


def read_run_dir(path: str | os.PathLike, name: str | None = None) -> RunDir:
    """Read ``training_manifest.json`` and ``resolved_config.yaml`` of an SFT output directory."""
    import yaml

    from selfrec_ft.training.manifest import CONFIG_FILE

    path = Path(path)
    if not path.is_dir():
        raise UserError("run directory not found", path)
    mpath = path / MANIFEST_FILE
    if not mpath.is_file():
        raise UserError(f"not an SFT output directory: {MANIFEST_FILE} is missing", path)
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"malformed JSON ({exc.msg})", mpath, exc.lineno) from None
    cpath = path / CONFIG_FILE
    config: dict[str, Any] = {}
    if cpath.is_file():
        try:
            config = yaml.safe_load(cpath.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"invalid YAML ({exc})".replace("\n", " "), cpath) from None
    data, model, hook = (config.get(k) or {} for k in ("data", "model", "eval_hook"))
    for key in ("model", "self_source"):
        if not manifest.get(key):
            raise UserError(f'the manifest has no "{key}"', mpath)
    n_articles = data.get("n_articles", manifest.get("articles"))
    if not isinstance(n_articles, int):
        raise UserError("cannot tell how many articles the run was trained on (no data.n_articles in "
                        f"{CONFIG_FILE}, no articles in the manifest)", mpath)
    final_step = manifest.get("global_step")
    final = None
    if manifest.get("status") == "done" and has_weights(path):
        final = Checkpoint(FINAL, final_step if isinstance(final_step, int) else None, str(path.resolve()))
    checkpoints = []
    for sub in path.iterdir():
        m = CHECKPOINT_RE.match(sub.name)
        if m and sub.is_dir() and has_weights(sub):  # a checkpoint cut short by a kill has no weights
            checkpoints.append(Checkpoint(sub.name, int(m.group(1)), str(sub.resolve())))
    checkpoints.sort(key=lambda c: c.step)
    return RunDir(
        path=path, name=name or path.name, base_model=str(manifest["model"]),
        self_source=str(manifest["self_source"]), others=list(manifest.get("others") or []) or None,
        n_articles=n_articles, preset=manifest_preset(manifest, mpath) or str(data.get("prompt_preset")
                                                                                or DEFAULT_PRESET),
        max_length=manifest.get("prompt_max_length"), dtype=_eval_dtype(model.get("dtype")),
        train_article_ids=frozenset(str(a) for a in manifest.get("train_article_ids") or []),
        final_step=final_step if isinstance(final_step, int) else None, final=final, checkpoints=checkpoints,
        training_corpus=data.get("corpus"), hook_in_domain=hook.get("hook_in_domain"),
        hook_out_of_domain=hook.get("hook_out_of_domain"),
    )


def run_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Short unique names: the directory names, or paths relative to the common parent if two clash."""
    resolved = [Path(p).resolve() for p in paths]
    names = [p.name for p in resolved]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([str(p) for p in resolved]))
    return [str(p.relative_to(common)) or p.name for p in resolved]


def default_out_dir(paths: Sequence[str | os.PathLike]) -> Path:
    """Where the table goes by default: the run directory itself for one run, else the deepest
    directory containing all of them."""
    resolved = [Path(p).resolve() for p in paths]
    if len(set(resolved)) == 1:
        return resolved[0]
    return Path(os.path.commonpath([str(p) for p in resolved]))


# ----------------------------------------------------------------------------- settings and jobs


@dataclass
class EvalSettings:
    """How to evaluate. ``in_domain`` / ``out_of_domain`` are corpus directories or ``demo://`` refs
    (default: the run's evaluation-hook corpora, the training corpus for in-domain); ``*_kind`` is
    ``short`` or ``highlights`` (recorded as the rows' domain, picks the familiarity prompt; default:
    guessed from the corpus directory name). ``self_source`` / ``others`` / ``dtype`` override the
    run's; ``batch_size`` / ``device`` / ``dtype`` build each evaluation's
    :class:`~selfrec_ft.scoring.scorer.Scorer`, the rest its :class:`~selfrec_ft.scoring.spec.EvalSpec`."""

    in_domain: str | None = None
    out_of_domain: str | None = None
    in_domain_kind: str | None = None
    out_of_domain_kind: str | None = None
    tasks: Sequence[str] = DEFAULT_EVAL_TASKS
    limit: int | None = None
    batch_size: int | None = None
    familiarity: bool = False
    self_source: str | None = None
    others: Sequence[str] | None = None
    dtype: str | None = None
    device: str | None = None
    seed: int = 0
    n_resamples: int = 2000
    progress: bool = True
    demo_cache: str | None = None
    worse_question: bool = True  # also ask "which summary is worse?" (question-following gap)
    canary: Any = None  # selfrec_ft.training.canary.CanarySettings: the capability canary of every evaluation

    @property
    def spec_tasks(self) -> tuple[str, ...]:
        return tuple(self.tasks) + ((FAMILIARITY,) if self.familiarity else ())


@dataclass
class EvalJob:
    """One (model, domain) evaluation: the model path, what to measure (``spec``; its ``domain`` is
    the corpus kind written into the rows) and where (``out_dir``). ``domain`` here is the table's
    ``in_domain`` / ``out_of_domain``."""

    run: str
    checkpoint: str
    step: int | None
    domain: str
    model: str
    spec: EvalSpec
    dtype: str
    max_length: int | None
    out_dir: Path
    reuse_of: "EvalJob | None" = None  # a checkpoint at the final step reuses the final evaluation

    @property
    def corpus(self) -> Corpus:
        return self.spec.corpus

    @property
    def skip_first(self) -> int:
        return self.spec.skip_first

    @property
    def examples(self) -> Path:
        return (self.reuse_of or self).out_dir / EXAMPLES_FILE


class CorpusCache:
    """Corpora loaded once per path; ``demo://`` refs resolved through the training library."""

    def __init__(self, demo_cache: str | None = None):
        self.demo_cache = demo_cache
        self._by_path: dict[str, Corpus] = {}

    def resolve(self, ref: str) -> str:
        from types import SimpleNamespace

        from selfrec_ft.training.demo_assets import is_demo_ref, resolve_demo_refs

        if is_demo_ref(ref):
            data = SimpleNamespace(corpus=ref, demo_cache=self.demo_cache)
            resolve_demo_refs(data, SimpleNamespace(model_name_or_path=None))
            return data.corpus
        return str(Path(ref).expanduser().resolve())

    def get(self, ref: str) -> Corpus:
        path = self.resolve(ref)
        if path not in self._by_path:
            self._by_path[path] = load_corpus(path)
        return self._by_path[path]


def guess_kind(corpus_ref: str | None) -> str | None:
    """``short`` (XSUM-like) or ``highlights`` (CNN-like) from a corpus path's last two names."""
    if not corpus_ref:
        return None
    words = " ".join(Path(str(corpus_ref).replace("demo://", "")).parts[-2:]).lower()
    for kind, hints in KIND_HINTS:
        if any(h in words for h in hints):
            return kind
    return None


def settings_hash(**values: Any) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def _domain_sources(settings: EvalSettings, run: RunDir) -> dict[str, tuple[str | None, str | None]]:
    refs = {"in_domain": settings.in_domain or run.hook_in_domain or run.training_corpus,
            "out_of_domain": settings.out_of_domain or run.hook_out_of_domain}
    kinds = {"in_domain": settings.in_domain_kind, "out_of_domain": settings.out_of_domain_kind}
    flags = {"in_domain": "--in-domain (eval.in_domain)", "out_of_domain": "--out-of-domain (eval.out_of_domain)"}
    out = {}
    for dom in DOMAINS:
        if not refs[dom]:
            raise UserError(f"run {run.name}: no {dom.replace('_', '-')} corpus: set {flags[dom]}", run.path)
        out[dom] = (refs[dom], kinds[dom] or guess_kind(refs[dom]))
    return out


@dataclass
class _Target:
    """What the models of one run (or one base model) are evaluated on: per domain a corpus ref and
    kind, the sources, preset, prompt budget, dtype, the in-domain articles to skip and the ids
    trained on."""

    run: str
    sources: dict[str, tuple[str | None, str | None]]
    self_source: str
    others: list[str] | None
    preset: str
    max_length: int | None
    dtype: str
    skip: int
    train_ids: frozenset[str]
    manifest: str | None = None  # the run's training manifest: where the preset came from


def _job(target: _Target, ck: Checkpoint, domain: str, root: Path, settings: EvalSettings,
         corpora: "CorpusCache") -> EvalJob:
    ref, kind = target.sources[domain]
    corpus = corpora.get(ref)
    corpus.require_sources([target.self_source])
    others = [s for s in corpus.sources() if s != target.self_source] if target.others is None else list(target.others)
    corpus.require_sources(others)
    if settings.familiarity and kind is None:
        raise UserError(f"--familiarity needs the {domain.replace('_', '-')} corpus kind (short or highlights): "
                        f"it cannot be guessed from {ref}; set --{domain.replace('_', '-')}-kind", corpus.path)
    skip = target.skip if domain == "in_domain" else 0
    ids = [a.id for a in corpus.heldout_articles(skip, settings.limit)]
    if not ids:
        raise UserError(f"run {target.run}: no {domain.replace('_', '-')} articles to evaluate: the corpus has "
                        f"{len(corpus.articles)} and the first {skip} are skipped", corpus.path)
    trained = [a for a in ids if a in target.train_ids]
    if trained:
        raise UserError(f"run {target.run}: {len(trained)} of the {domain.replace('_', '-')} articles to evaluate "
                        f"were trained on (e.g. {trained[0]!r}); is this the training corpus in training order?",
                        corpus.path)
    spec = EvalSpec(corpus=corpus, self_source=target.self_source, others=others, tasks=settings.spec_tasks,
                    skip_first=skip, limit=settings.limit, preset=target.preset, domain=kind, seed=settings.seed,
                    n_resamples=settings.n_resamples, protocol=Protocol(target.preset, "manifest", target.manifest,
                                                                        target.preset),
                    worse_question=settings.worse_question)
    h = settings_hash(corpus=str(corpus.path), skip=skip, limit=settings.limit, self_source=target.self_source,
                      others=others, preset=target.preset, max_length=target.max_length, dtype=target.dtype,
                      kind=kind, **({"worse_question": True} if spec.worse_question else {}))
    return EvalJob(run=target.run, checkpoint=ck.name, step=ck.step, domain=domain, model=ck.path, spec=spec,
                   dtype=target.dtype, max_length=target.max_length, out_dir=root / f"{domain}-{h}")


def _target(settings: EvalSettings, run: RunDir) -> _Target:
    return _Target(run=run.name, sources=_domain_sources(settings, run),
                   self_source=settings.self_source or run.self_source,
                   others=list(settings.others) if settings.others else run.others, preset=run.preset,
                   max_length=run.max_length, dtype=settings.dtype or run.dtype, skip=run.n_articles,
                   train_ids=run.train_article_ids, manifest=str(run.path / MANIFEST_FILE))


def _base_jobs(runs: Sequence[RunDir], settings: EvalSettings, base_root: Path, corpora: "CorpusCache"
               ) -> list[EvalJob]:
    """The untrained base model(s): once per distinct (base model, sources, preset, prompt budget,
    dtype, corpora), on the in-domain articles after the largest ``n_articles`` of the runs sharing it."""
    groups: dict[tuple, list[RunDir]] = {}
    for run in runs:
        t = _target(settings, run)
        key = (run.base_model, t.self_source, tuple(t.others or ()), t.preset, t.max_length, t.dtype,
               tuple((d, *t.sources[d]) for d in DOMAINS))
        groups.setdefault(key, []).append(run)
    jobs = []
    for key, members in groups.items():
        name = _slug(Path(key[0]).name) + "-" + settings_hash(key=key)[:6]
        target = _target(settings, members[0])
        target.run, target.skip = BASE, max(r.n_articles for r in members)
        target.train_ids = frozenset().union(*(r.train_article_ids for r in members))
        ck = Checkpoint(name, 0, key[0])
        jobs += [_job(target, ck, dom, base_root / name, settings, corpora) for dom in DOMAINS]
    return jobs


def plan_evaluations(runs: Sequence[RunDir], settings: EvalSettings, base_root: str | os.PathLike | None,
                     checkpoints: bool = True, final: bool = True, corpora: CorpusCache | None = None
                     ) -> list[EvalJob]:
    """Every evaluation of ``runs`` (base models first, unless ``base_root`` is None; then per run
    its checkpoints in step order and the final model), each in both domains. Checks sources and
    corpora now, before anything is scored."""
    corpora = corpora or CorpusCache(settings.demo_cache)
    targets = [(run, _target(settings, run)) for run in runs]  # every run's corpora checked up front
    jobs = _base_jobs(runs, settings, Path(base_root), corpora) if base_root is not None else []
    for run, target in targets:
        cks = list(run.checkpoints) if checkpoints else []
        if final and run.final is not None:
            cks.append(run.final)
        final_jobs: dict[str, EvalJob] = {}
        run_jobs = []
        for ck in sorted(cks, key=lambda c: (c.name != FINAL, c.step if c.step is not None else -1)):
            for dom in DOMAINS:
                job = _job(target, ck, dom, run.path.resolve() / EVAL_SUBDIR / ck.name, settings, corpora)
                if ck.name == FINAL:
                    final_jobs[dom] = job
                elif run.final is not None and final and ck.step == run.final.step and dom in final_jobs:
                    job.reuse_of = final_jobs[dom]
                run_jobs.append(job)
        run_jobs.sort(key=lambda j: (j.checkpoint == FINAL, j.step if j.step is not None else -1))
        jobs.extend(run_jobs)
    for name in dict.fromkeys(preset_name(run.preset) for run in runs):  # every check passed: the prompts,
        with_it = [run for run in runs if preset_name(run.preset) == name]  # said once per preset
        where = with_it[0].path / MANIFEST_FILE if len(with_it) == 1 else f"the training manifests of {len(with_it)} runs"
        print(f"prompts: preset {name}, from {where}", file=sys.stderr)
    return jobs


# ----------------------------------------------------------------------------- running


def _cached_report(job: EvalJob, settings: EvalSettings) -> dict[str, Any] | None:
    """The job's report.json if it is complete for these settings, else None."""
    from selfrec_ft.scoring.evaluate import CONFIG_FILE

    rpath, cpath = job.out_dir / REPORT_JSON, job.out_dir / CONFIG_FILE
    if not (rpath.is_file() and cpath.is_file() and job.examples.is_file()):
        return None
    try:
        report = json.loads(rpath.read_text(encoding="utf-8"))
        config = json.loads(cpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    meta = (report.get("meta") or {}).get("eval") or {}
    spec = job.spec
    expected = len(job.corpus.heldout_articles(spec.skip_first, spec.limit))
    ok = (meta.get("model") == job.model and meta.get("corpus") == str(job.corpus.path)
          and meta.get("self_source") == spec.self_source and meta.get("others") == list(spec.others or ())
          and meta.get("articles") == expected and set(spec.scored_tasks) <= set(meta.get("tasks") or ())
          and config.get("skip_first") == spec.skip_first and (not spec.familiarity or "familiarity" in report)
          and bool(config.get("worse_question")) == (spec.worse_question and "pairwise-preference" in spec.tasks))
    return report if ok else None


def _measure(report: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    r = (report.get("pairwise") or {}).get(name)
    if not r:
        return None
    return {k: r.get(k) for k in ("mean", "ci95", "n", "accuracy", "position_biased", "invalid")}


def _familiarity(examples: Path, seed: int, n_resamples: int) -> dict[str, Any] | None:
    """Per article: log-likelihood of the self summary minus the mean over the others' (as the sweep
    analysis computes it), averaged over articles, with an article bootstrap CI."""
    from selfrec_ft import stats
    from selfrec_ft.sweep.analysis import eval_series

    fam = eval_series([r for r in read_jsonl_rows(examples) if r.get("task") == "familiarity"]).get("familiarity")
    if not fam or not fam["values"]:
        return None
    mean, (lo, hi) = stats.cluster_bootstrap_mean(fam["values"], fam["clusters"], n_resamples=n_resamples, seed=seed)
    return {"mean": mean, "ci95": [lo, hi], "n": len(fam["values"])}


def table_row(job: EvalJob, report: Mapping[str, Any], settings: EvalSettings, cached: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"run": job.run, "checkpoint": job.checkpoint, "step": job.step, "domain": job.domain,
                           "model": job.model, "corpus": str(job.corpus.path), "skip_first": job.skip_first,
                           "articles": (report.get("meta") or {}).get("eval", {}).get("articles"),
                           "examples": str(job.examples), "cached": cached}
    if job.reuse_of is not None:
        row["same_as"] = job.reuse_of.checkpoint
    for name in MEASURES:
        row[name] = _measure(report, name)
    if report.get("question_following"):  # the better − worse gap, with both questions' self-picked rates
        qf = report["question_following"]
        row["question_following"] = {**qf["gap"], "better": qf["better"]["mean"], "worse": qf["worse"]["mean"],
                                     "answer_copying": qf["answer_copying"]}
    if settings.familiarity:
        row["familiarity"] = _familiarity(job.examples, settings.seed, settings.n_resamples)
    return row


def run_job(job: EvalJob, settings: EvalSettings) -> tuple[dict[str, Any], bool]:
    """``(report, cached)``: the cached complete report, or a fresh (resumed) :func:`evaluate` run."""
    from selfrec_ft.defaults import DEFAULT_BATCH_SIZE
    from selfrec_ft.scoring.evaluate import evaluate
    from selfrec_ft.scoring.scorer import Scorer

    target = job.reuse_of or job
    cached = _cached_report(target, settings)
    if cached is not None:
        return cached, True
    scorer = Scorer(target.model, dtype=target.dtype, device=settings.device,
                    batch_size=settings.batch_size or DEFAULT_BATCH_SIZE, max_length=target.max_length)
    try:
        result = evaluate(scorer, target.spec, target.out_dir, progress=settings.progress)
    finally:
        scorer.close()  # the next evaluation never shares the GPU with this model
    return result.report, False


def run_evaluations(jobs: Sequence[EvalJob], settings: EvalSettings,
                    on_result: Callable[[EvalJob, dict[str, Any]], None] | None = None,
                    on_error: Callable[[EvalJob, Exception], None] | None = None) -> list[dict[str, Any]]:
    """Run ``jobs`` in order with a progress bar; returns the table rows. ``on_result(job, row)`` is
    called after each; with ``on_error`` an exception of one evaluation is handed to it and the rest
    go on (without it, it propagates)."""
    from tqdm.auto import tqdm

    rows = []
    with tqdm(total=len(jobs), desc="evaluations", unit="eval", disable=not settings.progress,
              dynamic_ncols=True) as bar:
        for job in jobs:
            bar.set_postfix_str(f"{job.run} {job.checkpoint} {job.domain}", refresh=True)
            try:
                report, cached = run_job(job, settings)
            except Exception as exc:  # noqa: BLE001 - handed to the caller's policy
                if on_error is None:
                    raise
                on_error(job, exc)
                bar.update(1)
                continue
            row = table_row(job, report, settings, cached)
            if settings.canary is not None:
                from selfrec_ft.training.canary import job_canary

                row["canary"] = job_canary(job, settings)
            rows.append(row)
            if on_result is not None:
                on_result(job, row)
            bar.update(1)
    return rows


# ----------------------------------------------------------------------------- the table


def render_table_markdown(rows: Sequence[Mapping[str, Any]], title: str = "Recognition and preference by checkpoint"
                          ) -> str:
    fam = any("familiarity" in r for r in rows)
    gap = any("question_following" in r for r in rows)
    header = ["run", "checkpoint", "step", "domain", "recognition [95% CI]", "preference [95% CI]"]
    header += ["better − worse gap [95% CI]"] if gap else []
    header += ["familiarity (self − others)"] if fam else []
    header += ["n pairs"]
    lines = [f"# {title}", "",
             "Mean pairwise score on held-out articles (½[p̂_fwd(self) + p̂_bwd(self)], normalised over the "
             "options; 0.5 = chance), 95% CI from a bootstrap over articles. † = position-biased (the "
             "evaluator mostly answers the same position in both orders). In-domain evaluations skip the "
             "run's training articles."
             + (' Gap: P(self picked) asked "which is better?" minus asked "which is worse?"; ‡ = answer-copying '
                "(the judge picks its own summary whatever it is asked: the gap's interval includes 0, or less "
                "than half the self-preference follows the question)." if gap else ""), ""]
    cells = []
    for r in rows:
        n = (r.get("recognition") or {}).get("n")
        name = r["checkpoint"] + (f" (= {r['same_as']})" if r.get("same_as") else "")
        row = [r["run"], name, md.DASH if r["step"] is None else str(r["step"]), r["domain"].replace("_", "-"),
               md.estimate(r.get("recognition"), biased=" †"), md.estimate(r.get("preference"), biased=" †")]
        if gap:
            row.append(md.estimate(r.get("question_following")) + (" ‡" if (r.get("question_following") or {})
                                                                   .get("answer_copying") else ""))
        if fam:
            row.append(md.estimate(r.get("familiarity")))
        cells.append(row + [md.DASH if n is None else str(n)])
    return "\n".join(lines + md.table(header, cells)) + "\n"


def write_table(rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``eval_checkpoints.json`` and ``eval_checkpoints.md`` into ``out_dir`` (atomically)."""
    from selfrec_ft.training.canary import add_checkpoint_flags, render_checkpoint_canary

    out = Path(out_dir)
    add_checkpoint_flags(rows)
    atomic_write_json(out / TABLE_JSON, list(rows))
    atomic_write_text(out / TABLE_MD, render_table_markdown(rows) + "\n".join(render_checkpoint_canary(rows))
                      + ("\n" if any(r.get("canary") for r in rows) else ""))
    return out / TABLE_JSON, out / TABLE_MD


@dataclass
class CheckpointTable:
    rows: list[dict[str, Any]]
    json_path: Path
    md_path: Path
    jobs: list[EvalJob] = field(default_factory=list)


def eval_checkpoints(run_dirs: Sequence[str | os.PathLike], settings: EvalSettings,
                     out: str | os.PathLike | None = None, include_base: bool = True,
                     checkpoints: bool = True) -> CheckpointTable:
    """Evaluate the base model(s), checkpoints and final models of ``run_dirs`` in both domains and
    write the table into ``out`` (default: :func:`default_out_dir`). Base-model evaluations go to
    ``OUT/base_model/``."""
    if not run_dirs:
        raise UserError("no run directories given")
    out_dir = Path(out) if out is not None else default_out_dir(run_dirs)
    runs = [read_run_dir(p, n) for p, n in zip(run_dirs, run_names(run_dirs))]
    if not any(r.final or r.checkpoints for r in runs):
        raise UserError("no checkpoint or final model to evaluate in " + ", ".join(str(r.path) for r in runs))
    jobs = plan_evaluations(runs, settings, out_dir / "base_model" if include_base else None, checkpoints=checkpoints)
    rows = run_evaluations(jobs, settings)
    json_path, md_path = write_table(rows, out_dir)
    return CheckpointTable(rows, json_path, md_path, jobs)
