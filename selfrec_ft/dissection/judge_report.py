"""The comparison of judges (:func:`~selfrec_ft.dissection.self_preference.run_judge_dissection`)
as readable tables (``comparison.md``) and a grouped bar chart (``comparison.png``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from selfrec_ft import markdown as md
from selfrec_ft.dissection.properties import FEATURES, SELF, SHORT_LABELS
from selfrec_ft.files import save_figure


def comparison_markdown(result: Mapping[str, Any]) -> str:
    """Readable tables of :func:`run_judge_dissection`'s result."""
    judges = result["judges"]
    lines = [
        f"# Self-preference dissection: self = {result['self_source']}",
        "",
        f"{result['n_articles']} held-out articles (the first {result['skip_first']} skipped), "
        f"{result['n_comparisons']} comparisons of the self summary with {', '.join(result['others'])}; the self "
        f"summary is response 1 or 2 by a seeded coin (seed {result['seed']}). Each judge answers "
        f"`{result['template']}` ({result['preset']}) in both orders; label = P(response 1) ≷ ½; "
        f"ties (|P − ½| ≤ {result['tie_tolerance']:g}) and invalid pairs are dropped."
        + (f" {result['skipped_missing']} (article, other) pairs lack a summary and are skipped."
           if result.get("skipped_missing") else ""),
        "",
        "## Self-preference and the `self` feature",
        "",
        "*self won*: share of labelled pairs whose label picks the self summary; *mean P(self)*: the "
        "protocol's preference score (mean over valid pairs); 95% CIs resample articles. *self score*: "
        "100·σ(w_self), the chance the self summary is preferred when it is equal on every measured "
        "attribute. *implied*: the fitted model's mean P(self preferred), with all features and with "
        "w_self = 0; their difference is the self-preference that only `self` explains.",
        "",
        "| judge | labelled | ties | invalid | self won | 95% CI | mean P(self) | 95% CI | self score | 95% CI "
        "| implied (all) | implied (attributes only) | from `self` |",
        "|---|---:|---:|---:|---:|---|---:|---|---:|---|---:|---:|---:|",
    ]
    for e in judges:
        r, p, s, imp = e["self_preference_rate"], e["mean_self_probability"], e["self"], e["implied_self_preference"]
        lines.append(
            f"| {e['name']} | {e['n_labelled']} | {e['ties']} | {e['invalid']} | {md.num(r['mean'])} "
            f"| {md.ci(r['ci95'])} | {md.num(p['mean'])} | {md.ci(p['ci95'])} | {md.num(s and s['score'], '.2f')} "
            f"| {md.ci(s and s['ci95'], '.2f')} "
            f"| {imp['full']:.3f} | {imp['attributes_only']:.3f} | {imp['from_self']:+.3f} |")
    attrs = sorted({a for e in judges for a in e["attributes"]}, key=FEATURES.index)
    if attrs:
        lines += ["", "## Attribute scores (100·σ(w), 95% CI)", "",
                  "| property | " + " | ".join(e["name"] for e in judges) + " |",
                  "|---|" + "---|" * len(judges)]
        for a in attrs:
            cells = []
            for e in judges:
                p = e["attributes"].get(a)
                cells.append("not fitted" if p is None else f"{p['score']:.2f} {md.ci(p['ci95'], '.2f')}")
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
    if result["changes"]:
        lines += ["", f"## Change from {result['base']}", "",
                  "| judge | Δ self won | 95% CI | Δ mean P(self) | 95% CI | Δ self score | Δ implied from `self` "
                  "| Δ implied from attributes |",
                  "|---|---:|---|---:|---|---:|---:|---:|"]
        for c in result["changes"]:
            r, p, imp = c["self_preference_rate"] or {}, c["mean_self_probability"] or {}, c["implied_self_preference"]
            lines.append(
                f"| {c['judge']} | {md.num(r.get('delta'), '+.3f')} | {md.ci(r.get('ci95'))} "
                f"| {md.num(p.get('delta'), '+.3f')} "
                f"| {md.ci(p.get('ci95'))} | {md.num(c['self_score'], '+.2f')} | {imp['from_self']:+.3f} "
                f"| {imp['from_attributes']:+.3f} |")
        for c in result["changes"]:
            if c["attributes"]:
                lines += ["", f"Attribute score changes, {c['judge']} − {c['base']}: "
                          + ", ".join(f"{a} {d:+.2f}" for a, d in c["attributes"].items()) + "."]
    lines += ["", "Per judge: `<name>/report.md` (full fit), `<name>/comparisons.jsonl` (labels), "
              "`<name>/dropped.jsonl` (ties and invalid pairs)."]
    return "\n".join(lines) + "\n"


def plot_comparison(result: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Grouped horizontal bars: every fitted feature's score per judge, from 50, with 95% whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judges = result["judges"]
    feats = [f for f in FEATURES if any(f == SELF and e["self"] or f in e["attributes"] for e in judges)]
    # FEATURES ends with self: the last row is drawn on top
    k = len(judges)
    height = 0.8 / k
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.45 * len(feats) * max(1, k / 2)))
    for j, e in enumerate(judges):
        scores, lo, hi, ys = [], [], [], []
        for i, f in enumerate(feats):
            p = e["self"] if f == SELF else e["attributes"].get(f)
            if p is None:
                continue
            scores.append(p["score"])
            lo.append(p["score"] - p["ci95"][0])
            hi.append(p["ci95"][1] - p["score"])
            ys.append(i - (j - (k - 1) / 2) * height)  # the first judge on top within a row
        s = np.array(scores)
        ax.barh(ys, s - 50, left=50, height=height, label=e["name"], alpha=0.85,
                xerr=np.vstack([lo, hi]), error_kw={"ecolor": "black", "capsize": 2, "lw": 1})
    ax.axvline(50, color="red", linestyle="--", lw=1)
    ax.set_yticks(np.arange(len(feats)), [SHORT_LABELS[f] for f in feats])
    ax.set_xlabel("preference score (%): response preferred when better on this feature alone")
    ax.set_title(f"Self-preference dissection (self = {result['self_source']}, n = {result['n_comparisons']})")
    ax.legend(loc="best", fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
