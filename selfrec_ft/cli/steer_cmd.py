"""``selfrec steer fit`` / ``selfrec steer sweep``: activation steering of the evaluator (issue 17).

``fit`` reads directions from the evaluator's residual stream on the training articles; ``sweep``
scores recognition and preference at several steering values (resumable) into a sweep directory that
``selfrec analyze`` reads. Heavy imports happen inside the run functions.
"""

from __future__ import annotations

import argparse
import sys

from selfrec_ft.cli.common import int_at_least, split_list
from selfrec_ft.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_PRESET,
    DTYPE_CHOICES,
    STEER_KINDS,
    STEER_MODES,
    STEER_TARGETS,
)
from selfrec_ft.errors import UserError


def _layers(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in split_list(text) or []]
    except ValueError:
        raise UserError(f"--layers needs comma-separated integers, got {text!r}") from None


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory, LoRA adapter directory or checkpoint")
    p.add_argument("--corpus", required=True, help="corpus directory (articles.jsonl, summaries.jsonl)")
    p.add_argument("--self-source", required=True, help="the evaluator's own source name in the corpus")
    p.add_argument("--others", help="comma-separated other sources (default: every other source)")
    p.add_argument("--batch-size", type=int_at_least(1), default=DEFAULT_BATCH_SIZE,
                   help=f"requests per forward pass (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--max-batch-tokens", type=int_at_least(1), help="tokens per forward pass (GPU memory)")
    p.add_argument("--max-length", type=int_at_least(8),
                   help="token budget of a prompt + answer (default: the model's context length)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--base-model", help="base model for an adapter directory (default: from its config)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(sub) -> None:
    p = sub.add_parser(
        "steer",
        help="steer the evaluator's activations: fit directions, sweep recognition and preference",
        description="Activation steering without training. `steer fit` reads directions from the "
        "residual stream on the training articles; `steer sweep` scores recognition and preference at "
        "several steering values into a sweep directory (`selfrec analyze OUT` reads it).",
    )
    steer = p.add_subparsers(dest="steer_command", metavar="{fit,sweep}")
    steer.required = True

    f = steer.add_parser(
        "fit", help="directions (authorship, readout, length and random controls) from the training articles",
        description="Score the pairwise recognition prompts of the first --n-articles articles once with "
        "activation recording at --layers and write OUT/directions.safetensors (unit directions) and "
        "OUT/directions.json (norms, held-out AUROC per layer, article ids, content hashes). Only those "
        "articles are read.")
    _model_args(f)
    f.add_argument("--n-articles", type=int_at_least(2),
                   help="read the first N articles (the training articles). Default: for a fine-tuned model "
                        "whose training manifest names this corpus, its training articles; else required")
    f.add_argument("--layers", help="comma-separated decoder layers, 0-based (default: every layer of a model "
                                    "with at most 6, else 4 evenly spaced)")
    f.add_argument("--heldout-fraction", type=float, default=0.25,
                   help="last fraction of the N articles held out to measure separation (default 0.25)")
    f.add_argument("--prompt-preset",
                   help="preset name or YAML template file (default: the preset the model was trained with, from "
                        f"its training_manifest.json; {DEFAULT_PRESET} for a model without one)")
    f.add_argument("--seed", type=int, default=0, help="seed of the random control direction")
    f.add_argument("--out", required=True, help="output directory")
    f.set_defaults(func=run_fit)

    s = steer.add_parser(
        "sweep", help="recognition and preference at several steering values (resumable)",
        description="For every --values entry, score pairwise recognition and preference (both orders) on "
        "the held-out articles, in-domain and --out-of-domain, with the intervention in the scoring engine; "
        "write OUT/steer.json, OUT/runs.json (`selfrec analyze OUT`), OUT/steer.md and one PNG per domain. "
        "Rerun the same command after a kill to resume.")
    _model_args(s)
    s.add_argument("--directions", required=True, help="directory written by `selfrec steer fit`")
    s.add_argument("--out-of-domain", help="a second corpus scored at every value (all of its articles)")
    s.add_argument("--kind", choices=STEER_KINDS, default="authorship", help="direction (default authorship)")
    s.add_argument("--mode", choices=STEER_MODES, required=True,
                   help="add: α·norm·u at the --target summary's tokens; scale: the component along u times λ "
                        "from the first summary on (1 unchanged, 0 ablated, < 0 inverted)")
    s.add_argument("--target", choices=STEER_TARGETS, help="summary whose tokens --mode add acts on")
    s.add_argument("--norm-of", choices=STEER_KINDS,
                   help="--mode add: scale by this direction's norm instead of the kind's own (controls of "
                        "the same norm: --kind length --norm-of authorship)")
    s.add_argument("--layer", type=int_at_least(0),
                   help="decoder layer (default: the highest held-out separation in the fit)")
    s.add_argument("--values", required=True, help="comma-separated steering values, e.g. 1,0.5,0,-1")
    s.add_argument("--skip-first", type=int_at_least(0),
                   help="evaluate in-domain after the first N articles. Default: a fine-tuned model's training "
                        "articles (its manifest), else the directions' articles; never fewer than those")
    s.add_argument("--allow-other-model", action="store_true",
                   help="steer a model whose files differ from the one the directions were fitted on")
    s.add_argument("--allow-train-articles", action="store_true",
                   help="score articles the model was trained on (refused without this flag)")
    s.add_argument("--limit", type=int_at_least(1), help="score at most K articles per domain")
    s.add_argument("--prompt-preset", help="preset name or YAML file (default: the preset the model was trained "
                                           "with, from its training_manifest.json; else the one the directions used)")
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    s.add_argument("--n-resamples", type=int_at_least(1), default=2000, help="bootstrap resamples")
    s.add_argument("--out", required=True, help="output directory")
    s.set_defaults(func=run_sweep)


def _check_layers_early(args, layers: list[int] | None) -> None:
    """Refuse a layer the model lacks from its config alone, before the weights load (no config: later)."""
    if layers is None:
        return
    from transformers import AutoConfig

    from selfrec_ft.models.loading import adapter_base, is_adapter_dir
    from selfrec_ft.steering.hooks import check_layers

    src = args.model
    if is_adapter_dir(src):
        src = args.base_model or adapter_base(src)
    try:
        n = getattr(AutoConfig.from_pretrained(src).get_text_config(), "num_hidden_layers", None)
    except (OSError, ValueError):
        return
    if isinstance(n, int):
        check_layers(layers, n)


def _scorer(args):
    from selfrec_ft.scoring.scorer import Scorer

    return Scorer(args.model, dtype=args.dtype, device=args.device, batch_size=args.batch_size,
                  max_batch_tokens=args.max_batch_tokens, max_length=args.max_length, base_model=args.base_model)


def run_fit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from selfrec_ft.data.corpus import load_corpus
    from selfrec_ft.jsonl import atomic_write_text
    from selfrec_ft.prompts.protocol import resolve_protocol
    from selfrec_ft.scoring.heldout import resolve_heldout
    from selfrec_ft.scoring.spec import EvalSpec
    from selfrec_ft.steering.directions import MANIFEST_FILE, fit_directions, separation_markdown

    protocol = resolve_protocol(args.model, args.prompt_preset)
    protocol.announce()
    corpus = load_corpus(args.corpus)
    n = args.n_articles
    if n is None:
        held = resolve_heldout(args.model, args.corpus, [a.id for a in corpus.articles], None, True)
        if not held.skip_first:
            raise UserError("--n-articles is needed: the model has no training manifest naming this corpus")
        n = held.skip_first
        print(f"--n-articles {n}: the model's training articles (its training manifest)", file=sys.stderr)
    spec = EvalSpec(corpus=corpus, self_source=args.self_source, others=split_list(args.others),
                    tasks=("pairwise-recognition",), preset=protocol.preset, protocol=protocol)
    layers = _layers(args.layers)
    scorer = _scorer(args)  # checks the model path
    _check_layers_early(args, layers)
    directions = fit_directions(scorer, spec, n, layers,
                                heldout_fraction=args.heldout_fraction, seed=args.seed, progress=not args.no_progress)
    out = directions.save(args.out)
    md = separation_markdown(directions)
    atomic_write_text(Path(out) / "directions.md", md)
    print(md, end="")
    best = directions.manifest.get("best_layer", {})
    print(f"best layers (held-out AUROC): " + ", ".join(f"{k} {v}" for k, v in best.items() if k != "random"))
    print(f"directions: {Path(out) / 'directions.safetensors'}; manifest: {Path(out) / MANIFEST_FILE}")
    return 0


def _sweep_protocol(args, directions_manifest: dict, where):
    """The sweep's prompts: --prompt-preset, else the model's training manifest, else the preset the
    directions were fitted with, else the default; said in one line (and a differing one in another)."""
    from selfrec_ft.prompts.protocol import Protocol, resolve_protocol, templates_sha256

    protocol = resolve_protocol(args.model, args.prompt_preset)
    fitted = directions_manifest.get("preset")
    if protocol.origin == "default" and fitted:
        protocol = Protocol(str(fitted), "flag", flag=f"the directions ({where})")
    protocol.announce()
    if fitted and templates_sha256(str(fitted)) != templates_sha256(protocol.preset):
        print(f"note: the directions were fitted with preset {fitted} ({where}); scoring with {protocol.preset}",
              file=sys.stderr)
    return protocol


def run_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from selfrec_ft.data.corpus import load_corpus
    from selfrec_ft.scoring.heldout import resolve_heldout
    from selfrec_ft.scoring.spec import EvalSpec
    from selfrec_ft.steering.directions import MANIFEST_FILE, Directions, file_hashes
    from selfrec_ft.steering.sweep import STEER_JSON, STEER_MD, SteerSetting, parse_values, run_steer_sweep

    values = parse_values(args.values)
    directions = Directions.load(args.directions)
    man = directions.manifest
    layer = directions.best_layer(args.kind) if args.layer is None else args.layer
    setting = SteerSetting(args.kind, args.mode, layer, args.target, args.norm_of)
    setting.intervention(directions, values[0])  # an unknown kind or layer fails before any scoring
    fitted_on = man.get("model_files") or {}
    if fitted_on and Path(args.model).exists() and file_hashes(args.model) != fitted_on:
        if not args.allow_other_model:
            raise UserError(f"the directions were fitted on {man.get('model')}, whose files differ from {args.model}'s; "
                            "pass --allow-other-model to steer this model with them", Path(args.directions) / MANIFEST_FILE)
        print(f"note: the directions were read from {man['model']}; steering {args.model}", file=sys.stderr)
    protocol = _sweep_protocol(args, man, Path(args.directions) / MANIFEST_FILE)
    corpus = load_corpus(args.corpus)
    ids = [a.id for a in corpus.articles]
    held = resolve_heldout(args.model, args.corpus, ids, args.skip_first, args.allow_train_articles, args.limit)
    skip = held.skip_first
    same_corpus = man.get("corpus") == str(Path(args.corpus).resolve()) or (
        man.get("corpus_files") and man["corpus_files"] == file_hashes(args.corpus, ("articles.jsonl",
                                                                                     "summaries.jsonl")))
    used = set(man.get("article_ids") or [])
    if held.note:
        print(held.note, file=sys.stderr)
    if same_corpus and used:
        last = max((i for i, a in enumerate(ids) if a in used), default=-1) + 1
        if args.skip_first is None and skip < last:
            skip = last
            print(f"--skip-first {skip}: the directions were fitted on the first {last} articles", file=sys.stderr)
        elif skip < last:
            raise UserError(f"--skip-first {skip} would score articles the directions were fitted on (the first "
                            f"{last}); use at least {last}", args.corpus)
    preset = protocol.preset
    others = split_list(args.others)
    specs = {"in_domain": EvalSpec(corpus=corpus, self_source=args.self_source, others=others, skip_first=skip,
                                   limit=args.limit, preset=preset, protocol=protocol, seed=args.seed,
                                   n_resamples=args.n_resamples)}
    if args.out_of_domain:
        specs["out_of_domain"] = EvalSpec(corpus=load_corpus(args.out_of_domain), self_source=args.self_source,
                                          others=others, skip_first=0, limit=args.limit, preset=preset,
                                          protocol=protocol, seed=args.seed, n_resamples=args.n_resamples)
    scorer = _scorer(args)
    steer = run_steer_sweep(scorer, directions, setting, values, specs, args.out, progress=not args.no_progress)
    from selfrec_ft.steering.sweep import steer_markdown

    out = Path(args.out)
    print(steer_markdown(steer), end="")
    print(f"steer.json: {out / STEER_JSON}; table: {out / STEER_MD}; plots: {', '.join(steer['plots']) or 'none'}")
    print(f"sweep directory for `selfrec analyze {out}`: {out / 'runs.json'}")
    return 0
