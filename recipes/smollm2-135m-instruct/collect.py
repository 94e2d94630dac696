"""Copy the SmolLM2 run's small reports into docs/results/smollm2-135m-instruct/ and print the
README's results table (base vs fine-tuned and controls, per other source, both domains), and the
fine-tuned judges' recognition (both domains) split by whether the own summary is the longer one of the pair
(written to DEST/length_strata.json: is it recognition, or "pick the longer"?).

Only report.md, report.json and PNG plots are copied: never examples.jsonl or anything holding
article or summary text. Run from the repository root after run_all.sh:
    python recipes/smollm2-135m-instruct/collect.py [OUT] [DEST]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from selfrec_ft import markdown as md

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/smollm2-135m-instruct")
DEST = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/results/smollm2-135m-instruct")
EVALS = [  # (row label, evaluation directory under OUT)
    ("base, small-chat preset", "base/{d}"),
    ("base, the first 24 of those articles", "base24/{d}"),
    ("base, P1's preset", "base_p1_preset/{d}"),
    ("LoRA, self labels", "xsum_lora/eval_{d}"),
    ("control: length labels", "xsum_lora_length/eval_{d}"),
    ("control: random labels", "xsum_lora_random/eval_{d}"),
    ("control: always 1", "xsum_lora_always_1/eval_{d}"),
]
SELF = "smollm2-135m-instruct"
STRATA = ["LoRA, self labels", "control: length labels", "control: random labels", "control: always 1"]
DOMAINS = {"xsum": "XSUM (in-domain)", "cnn": "CNN/DM (out-of-domain)"}
KEEP = ("report.md", "report.json", "style_ceiling.md", "style_ceiling.json", "bf16_scores.json", "steer.md",
        "steer.json", "directions.md", "analysis.json", "shift.md", "shift.json")  # reports only: no examples, generations or summaries


def copy_reports() -> None:
    for path in sorted(OUT.rglob("*")):
        if path.is_file() and (path.name in KEEP or path.suffix == ".png") and "checkpoint-" not in str(path):
            target = DEST / path.relative_to(OUT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def bias(block: dict) -> str:
    pos = block.get("position") or {}
    return f"{pos.get('always_1', 0):.2f} / {pos.get('always_2', 0):.2f}"


def length_strata(data: Path = Path("data/smollm2")) -> list[list[str]]:
    """Per fine-tuned judge and domain: its recognition split by whether its own summary is the longer
    one of the pair (``selfrec_ft.analysis.style_ceiling.judge_by_length``, what `selfrec analyze
    style-ceiling --report` adds for one judge); written to DEST/length_strata.json."""
    from selfrec_ft.analysis.style_ceiling import judge_by_length
    from selfrec_ft.data.corpus import load_corpus
    from selfrec_ft.scoring.report import load_rows

    rows, out = [], {}
    for d, domain in DOMAINS.items():
        if not (data / d / "articles.jsonl").is_file():
            continue
        corpus = load_corpus(data / d)
        for label, pattern in EVALS:
            f = OUT / pattern.format(d=d) / "examples.jsonl"
            if label not in STRATA or not f.is_file():
                continue
            split = out.setdefault(label, {})[d] = judge_by_length(load_rows([f]), corpus, SELF, "longer")
            for key, name in (("points_to_self", "longer"), ("not_to_self", "shorter or equal")):
                rows.append([label, domain, name, str(split[key]["n"]), md.estimate(split[key])])
    if out:
        (DEST / "length_strata.json").write_text(json.dumps(out, indent=1) + "\n")
    return rows


def main() -> None:
    copy_reports()
    rows, per_source = [], []
    for label, pattern in EVALS:
        for d, domain in DOMAINS.items():
            f = OUT / pattern.format(d=d) / "report.json"
            if not f.is_file():
                continue
            r = json.loads(f.read_text())
            rec, pref = r["pairwise"]["recognition"], r["pairwise"]["preference"]
            ind = (r.get("individual") or {}).get("recognition", {}).get("pooled")
            rows.append([label, domain, md.estimate(rec), md.estimate(pref), md.num(rec.get("mean_option_mass"), ".2f"),
                         bias(rec), md.estimate(ind, key="ratio") if ind else "–", str(rec["n_articles"])])
            for other, b in rec["by_source"].items():
                per_source.append([label, domain, other, md.estimate(b),
                                   md.estimate(pref["by_source"].get(other))])
    print("\n".join(md.table(["evaluator", "scored on", "pairwise recognition", "pairwise preference", "option mass",
                              "always 1 / always 2 (recognition)", "individual recognition ratio", "articles"], rows)))
    print()
    print("\n".join(md.table(["evaluator", "scored on", "other source", "recognition", "preference"], per_source)))
    strata = length_strata()
    if strata:
        print()
        print("\n".join(md.table(["evaluator", "scored on", "own summary is the", "pairs", "recognition"],
                                  strata)))


if __name__ == "__main__":
    main()
