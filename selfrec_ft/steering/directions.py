"""Steering directions read from the evaluator's residual stream on its training articles.

``fit_directions(scorer, spec, n_articles)`` renders the pairwise recognition prompts of the first
``n_articles`` articles of the spec's corpus (both orders, every other source) — never an article
after them — scores them once through the engine with a :class:`~selfrec_ft.steering.hooks.Recorder`
on the chosen layers, and takes differences of means of the decoder layers' outputs:

* ``authorship``: mean over the evaluator's own summaries of the mean activation over the summary's
  tokens, minus the same over the other sources' summaries (each summary as it appears in the
  pairwise prompt, in either position);
* ``readout``: the activation at the answer position when the self summary is in position 1, minus
  when it is in position 2;
* ``length`` (a control of an unrelated attribute): summaries longer than the median (in tokens)
  minus the others, over every summary shown;
* ``random`` (a control): a seeded Gaussian direction, with the authorship direction's norm.

Each direction is stored as a unit vector ``u`` and the norm of the difference of means (``add``
steering with value α adds ``α · norm · u``). Its **held-out separation** is measured within the
training articles: the direction is fitted again on all but the last ``heldout_fraction`` of them and
the AUROC (scikit-learn's ``roc_auc_score``) of the projection on the rest is reported (self vs
other summary; position 1 vs 2; long vs short), per layer, so a user can pick a layer.
``Directions.save`` writes ``directions.safetensors`` (unit vectors ``"<kind>.layer<L>"``) and
``directions.json`` (norms, separations, layers, the article ids used and content hashes of the
model and corpus files).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from selfrec_ft.defaults import STEER_KINDS
from selfrec_ft.errors import UserError
from selfrec_ft.jsonl import atomic_write_json
from selfrec_ft.scoring.items import build_items
from selfrec_ft.scoring.spec import EvalSpec
from selfrec_ft.training.manifest import sha256_file

DIRECTIONS_FILE = "directions.safetensors"
MANIFEST_FILE = "directions.json"
FIT_TASK = "pairwise-recognition"
MODEL_FILE_PATTERNS = ("*.safetensors", "*config.json", "tokenizer*", "*.model", "chat_template.jinja",
                       "special_tokens_map.json")


def default_layers(n_layers: int) -> list[int]:
    """Every layer of a model with at most 6; else 4 evenly spaced interior layers."""
    if n_layers <= 6:
        return list(range(n_layers))
    return sorted({int(round(x)) for x in np.linspace(0, n_layers - 1, 6)[1:-1]})


def file_hashes(path: str | os.PathLike, patterns: Sequence[str] = MODEL_FILE_PATTERNS) -> dict[str, str]:
    """sha256 of a model directory's weight, config and tokenizer files (name -> hash); {} for a hub id."""
    p = Path(path)
    if not p.is_dir():
        return {}
    files = sorted({f for pat in patterns for f in p.glob(pat) if f.is_file()})
    return {f.name: sha256_file(f) for f in files}


def _key(kind: str, layer: int) -> str:
    return f"{kind}.layer{layer}"


@dataclass
class Directions:
    """Unit directions per kind and layer with their norms, held-out separations and provenance
    (``manifest``: the content of ``directions.json``)."""

    units: dict[str, dict[int, np.ndarray]]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return [int(x) for x in self.manifest["layers"]]

    @property
    def kinds(self) -> list[str]:
        return list(self.units)

    def _entry(self, kind: str, layer: int) -> dict[str, Any]:
        if kind not in self.units:
            raise UserError(f"no {kind!r} direction here; fitted: {', '.join(self.units)}", self.manifest.get("path"))
        if layer not in self.units[kind]:
            raise UserError(f"no direction at layer {layer}; fitted layers: {', '.join(map(str, self.layers))}",
                            self.manifest.get("path"))
        return self.manifest["directions"][kind][str(layer)]

    def unit(self, kind: str, layer: int) -> np.ndarray:
        self._entry(kind, layer)
        return self.units[kind][layer]

    def norm(self, kind: str, layer: int) -> float:
        return float(self._entry(kind, layer)["norm"])

    def separation(self, kind: str, layer: int) -> float | None:
        return self._entry(kind, layer)["heldout_auroc"]

    def best_layer(self, kind: str) -> int:
        """The layer with the highest held-out AUROC of ``kind`` (the random control: authorship's)."""
        ref = "authorship" if kind == "random" else kind
        for k in dict.fromkeys((kind, ref)):
            if k not in self.units:
                raise UserError(f"no {k!r} direction here; fitted: {', '.join(self.units)}", self.manifest.get("path"))
        fitted = [layer for layer in self.layers if layer in self.units[kind]]
        scored = [(self.separation(ref, layer), layer) for layer in fitted
                  if self.separation(ref, layer) is not None]
        if not scored and len(fitted) == 1:
            return fitted[0]  # one layer fitted: nothing to choose
        if not scored:
            raise UserError(f"no held-out separation of {ref!r} to pick a layer by; pass --layer",
                            self.manifest.get("path"))
        return max(scored, key=lambda s: (s[0], -s[1]))[1]

    def save(self, out_dir: str | os.PathLike) -> Path:
        from safetensors.numpy import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {_key(k, layer): np.ascontiguousarray(v, dtype=np.float32)
                   for k, by_layer in self.units.items() for layer, v in by_layer.items()}
        tmp = out / (DIRECTIONS_FILE + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "selfrec_ft steering directions 1"})
        os.replace(tmp, out / DIRECTIONS_FILE)
        self.manifest["directions_sha256"] = sha256_file(out / DIRECTIONS_FILE)
        atomic_write_json(out / MANIFEST_FILE, self.manifest)
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Directions":
        from safetensors.numpy import load_file

        d = Path(directory)
        man_path, vec_path = d / MANIFEST_FILE, d / DIRECTIONS_FILE
        for p in (man_path, vec_path):
            if not p.is_file():
                raise UserError("not found (write it with `selfrec steer fit`)", p)
        try:
            manifest = json.loads(man_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"malformed JSON ({exc.msg})", man_path, exc.lineno) from None
        except UnicodeDecodeError:
            raise UserError("not valid UTF-8", man_path) from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("directions"), dict):
            raise UserError('expected an object with "directions"', man_path)
        if manifest.get("directions_sha256") and sha256_file(vec_path) != manifest["directions_sha256"]:
            raise UserError(f"{DIRECTIONS_FILE} does not match the hash recorded in {MANIFEST_FILE}", vec_path)
        units: dict[str, dict[int, np.ndarray]] = {}
        for key, vec in load_file(str(vec_path)).items():
            kind, _, layer = key.partition(".layer")
            units.setdefault(kind, {})[int(layer)] = vec
        manifest["path"] = str(d)
        return cls(units, manifest)


# ----------------------------------------------------------------------------- fitting


def _auroc(u: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(pos) == 0 or len(neg) == 0:
        return None
    scores = np.concatenate([pos @ u, neg @ u])
    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], scores))


def _diff(pos: np.ndarray, neg: np.ndarray) -> np.ndarray | None:
    if len(pos) == 0 or len(neg) == 0:
        return None
    return pos.mean(0) - neg.mean(0)


@dataclass
class _Samples:
    """Per article: the activations of one layer that each kind compares (positives, negatives)."""

    article: list[str] = field(default_factory=list)
    self_: list[np.ndarray] = field(default_factory=list)
    other: list[np.ndarray] = field(default_factory=list)
    self_len: list[int] = field(default_factory=list)
    other_len: list[int] = field(default_factory=list)
    forward: list[bool] = field(default_factory=list)
    answer: list[np.ndarray] = field(default_factory=list)

    def pairs(self, kind: str, articles: set[str], median: float | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        keep = np.array([a in articles for a in self.article], dtype=bool)
        S, O = np.stack(self.self_)[keep], np.stack(self.other)[keep]
        if kind in ("authorship", "random"):
            return S, O
        if kind == "readout":
            A, fwd = np.stack(self.answer)[keep], np.array(self.forward)[keep]
            return A[fwd], A[~fwd]
        X = np.concatenate([S, O])
        lengths = np.concatenate([np.array(self.self_len)[keep], np.array(self.other_len)[keep]])
        long = lengths > median
        return X[long], X[~long]

    def median_length(self, articles: set[str]) -> float:
        keep = [a in articles for a in self.article]
        lens = [n for k, n in zip(keep, self.self_len) if k] + [n for k, n in zip(keep, self.other_len) if k]
        return float(np.median(lens))


def _split(article_ids: list[str], heldout_fraction: float) -> tuple[list[str], list[str]]:
    n_held = max(1, int(round(heldout_fraction * len(article_ids))))
    if len(article_ids) - n_held < 1:
        raise UserError(f"{len(article_ids)} training article(s) cannot be split into a fitting and a held-out part; "
                        "use --n-articles 2 or more")
    return article_ids[:-n_held], article_ids[-n_held:]


def fit_directions(scorer, spec: EvalSpec, n_articles: int, layers: Sequence[int] | None = None, *,
                   heldout_fraction: float = 0.25, seed: int = 0, progress: bool = True) -> Directions:
    """Directions of every kind in :data:`~selfrec_ft.defaults.STEER_KINDS` at ``layers`` (default
    :func:`default_layers`) from the first ``n_articles`` articles of ``spec``'s corpus (its self
    source, others, preset and templates; its tasks and held-out articles are not used)."""
    from selfrec_ft.steering.hooks import Recorder, check_layers, num_layers

    if not 0 < heldout_fraction < 1:
        raise UserError(f"the held-out fraction must be between 0 and 1, got {heldout_fraction}")
    corpus = spec.load_corpus()
    if not 2 <= n_articles <= len(corpus.articles):
        raise UserError(f"--n-articles must be between 2 and the corpus's {len(corpus.articles)} articles, "
                        f"got {n_articles}", corpus.path)
    article_ids = [a.id for a in corpus.train_articles(n_articles)]
    fit_ids, held_ids = _split(article_ids, heldout_fraction)
    model = scorer.model
    n_layers = num_layers(model)
    layers = check_layers(default_layers(n_layers) if layers is None else layers, n_layers)
    items = build_items(corpus, scorer.tokenizer, spec.replace(tasks=(FIT_TASK,), skip_first=0, limit=None),
                        article_ids, scorer.max_length, spans=True)
    if not len(items):
        raise UserError("no pairwise prompt on the training articles (are the summaries missing?)", corpus.path)
    if any(it.request.summary_spans is None for it in items):
        raise UserError("the summaries' token positions cannot be located in the prompts (a fast tokenizer with "
                        "offsets and a chat template that keeps the prompt's text are needed)")
    with scorer.hooked(Recorder(layers)):
        results = scorer.score([it.request for it in items], progress=progress, desc="reading activations")
    samples = {layer: _Samples() for layer in layers}
    for it, res in zip(items, results):
        rec = res.recorded
        for layer in layers:
            s = samples[layer]
            acts = rec["layers"][layer]
            s.article.append(str(it.meta["article_id"]))
            s.self_.append(acts["self"])
            s.other.append(acts["other"])
            s.answer.append(acts["answer"])
            s.self_len.append(rec["n_tokens"]["self"])
            s.other_len.append(rec["n_tokens"]["other"])
            s.forward.append(it.meta["order"] == "forward")
    rng = np.random.default_rng(seed)
    hidden = len(results[0].recorded["layers"][layers[0]]["self"])
    randoms = {layer: rng.standard_normal(hidden) for layer in layers}
    units: dict[str, dict[int, np.ndarray]] = {k: {} for k in STEER_KINDS}
    table: dict[str, dict[str, Any]] = {k: {} for k in STEER_KINDS}
    all_ids, fit_set, held_set = set(article_ids), set(fit_ids), set(held_ids)
    for layer in layers:
        s = samples[layer]
        med_all, med_fit = s.median_length(all_ids), s.median_length(fit_set)
        for kind in STEER_KINDS:
            pos, neg = s.pairs(kind, all_ids, med_all)
            fpos, fneg = s.pairs(kind, fit_set, med_fit)
            hpos, hneg = s.pairs(kind, held_set, med_fit)
            if kind == "random":
                d_all = randoms[layer]
                d_fit = d_all
                norm = float(np.linalg.norm(_diff(pos, neg)))
            else:
                d_all, d_fit = _diff(pos, neg), _diff(fpos, fneg)
                norm = None if d_all is None else float(np.linalg.norm(d_all))
            if d_all is None or not norm:
                table[kind][str(layer)] = {"norm": None, "heldout_auroc": None, "n": [len(pos), len(neg)],
                                           "note": "no difference: one side is empty or the means are equal"}
                continue
            u = (d_all / np.linalg.norm(d_all)).astype(np.float32)
            u_fit = None if d_fit is None or not np.linalg.norm(d_fit) else d_fit / np.linalg.norm(d_fit)
            units[kind][layer] = u
            table[kind][str(layer)] = {
                "norm": norm,
                "heldout_auroc": None if u_fit is None else _auroc(u_fit, hpos, hneg),
                "n": [len(pos), len(neg)], "n_heldout": [len(hpos), len(hneg)],
            }
            if kind == "length":
                table[kind][str(layer)]["median_tokens"] = med_all
    units = {k: v for k, v in units.items() if v}
    corpus_files = {}
    if corpus.path is not None:
        from selfrec_ft.defaults import ARTICLES_FILE, SUMMARIES_FILE

        corpus_files = {name: sha256_file(corpus.path / name) for name in (ARTICLES_FILE, SUMMARIES_FILE)
                        if (corpus.path / name).is_file()}
    manifest = {
        "format": 1,
        "model": scorer.source, "model_files": file_hashes(scorer.source),
        "corpus": str(corpus.path.resolve()) if corpus.path else None, "corpus_files": corpus_files,
        "self_source": spec.self_source, "others": items.others, "preset": spec.preset,
        "templates": spec.template_map, "task": FIT_TASK, "max_length": scorer.max_length, "dtype": scorer.dtype,
        "n_articles": n_articles, "article_ids": article_ids, "fit_article_ids": fit_ids,
        "heldout_article_ids": held_ids, "heldout_fraction": heldout_fraction, "prompts": len(items),
        "shortened_prompts": items.shortened, "skipped_missing_summary": items.skipped_missing,
        "layers": list(layers), "num_layers": n_layers, "hidden_size": hidden, "seed": seed,
        "residual_stream": "output of decoder layer L, 0-based (before the final norm for the last layer)",
        "directions": table,
    }
    out = Directions(units, manifest)
    best = {}
    for kind in units:
        try:
            best[kind] = out.best_layer(kind)
        except UserError:  # no held-out separation at any fitted layer (e.g. a held-out side is empty)
            continue
    manifest["best_layer"] = best
    return out


def _shown_path(path: str | None) -> str | None:
    """A recorded absolute path as a report shows it: relative to the working directory when under
    it, else only its name (a committed report must not carry the author's directory layout)."""
    if not path:
        return path
    try:
        return str(Path(path).relative_to(Path.cwd().resolve()))
    except ValueError:
        return Path(path).name


def separation_markdown(directions: Directions) -> str:
    """A table of every direction's norm and held-out AUROC per layer (best layer marked)."""
    from selfrec_ft.markdown import num, table

    m = directions.manifest
    best = m.get("best_layer", {})
    rows = []
    for kind, by_layer in m["directions"].items():
        for layer, e in by_layer.items():
            mark = " (best)" if best.get(kind) == int(layer) and kind != "random" else ""
            held = e.get("n_heldout") or ["–", "–"]
            rows.append([kind, f"{layer}{mark}", num(e.get("norm")), num(e.get("heldout_auroc")),
                         f"{held[0]} / {held[1]}"])
    lines = [f"# Steering directions of {m['self_source']}", "",
             f"From the first {m['n_articles']} articles of {_shown_path(m['corpus'])} ({m['prompts']} {m['task']} prompts); "
             f"held-out separation: AUROC of the projection on a direction fitted on the first "
             f"{len(m['fit_article_ids'])} of them, scored on the last {len(m['heldout_article_ids'])} "
             "(authorship and random: self vs other summary; readout: self in position 1 vs 2; length: "
             "long vs short summary). 0.5 = no separation.", ""]
    lines += table(["direction", "layer", "norm", "held-out AUROC", "held-out n (pos / neg)"], rows)
    return "\n".join(lines) + "\n"
