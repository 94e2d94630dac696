"""Generation for attribute DPO: the policy's own summaries, sharded over processes and resumable.

* :class:`GenerationSettings`: how summaries are generated (style, budget, batch, sampling);
* :func:`generate_sharded`: the missing summaries of some articles into ``DIR/<stem>*.jsonl``, each
  process a share into its own file, every process then reading them all;
* :func:`generation_messages`: the generation prompt of each article, its article shortened exactly
  as generation shortens it (a DPO pair is trained on the prompt its candidates came from);
* :func:`attribute_values`: the attribute of each article's (greedy) summary;
* :func:`check_settings`: a directory of generations remembers the settings it was made with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfrec_ft.defaults import DEFAULT_PRESET

SETTINGS_FILE = "settings.json"


@dataclass(frozen=True)
class GenerationSettings:
    """How one batch of summaries is generated: the generation template (``style``), the token
    budgets, the batch size, and greedy or sampled (``num_return_sequences`` candidates each)."""

    style: str = "short"
    max_new_tokens: int = 100
    batch_size: int = 8
    max_length: int | None = None
    preset: str = DEFAULT_PRESET
    progress: bool = True
    num_return_sequences: int = 1
    sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def replace(self, **changes: Any) -> "GenerationSettings":
        return dataclasses.replace(self, **changes)


def check_settings(directory: Path, settings: dict[str, Any], what: str, is_main: bool = True) -> None:
    """Record ``settings`` in ``directory/settings.json``; refuse a directory made with others."""
    from selfrec_ft.jsonl import record_settings

    record_settings(directory / SETTINGS_FILE, settings, held=f"these {what} were made",
                    hint="use another output_dir (or delete this one)", write=is_main)


def generation_messages(tokenizer, corpus, article_ids: Sequence[str], style: str, preset: str,
                        max_length: int | None, max_new_tokens: int) -> dict[str, list[dict[str, str]]]:
    """The generation prompt messages per article, with the article shortened exactly as
    :func:`~selfrec_ft.generation.generate.generate_summaries` shortens it (so a DPO pair is
    trained on the prompt its candidates were sampled from)."""
    from selfrec_ft.prompts.chat import chat_messages
    from selfrec_ft.prompts.templates import chat_text, encode, fit_article, load_preset

    template = load_preset(preset).task(f"generate-{style}")
    budget = None if max_length is None else max_length - max_new_tokens

    def length_of(v: dict[str, str]) -> int:
        return len(encode(tokenizer, chat_text(tokenizer, template.messages(**v), True)))

    out = {}
    for aid in article_ids:
        values, _ = fit_article({"article": corpus.article(aid).text}, length_of, budget, template.name)
        out[aid] = chat_messages(tokenizer, template.messages(**values))  # a system turn folded where needed
    return out


@dataclass
class Generated:
    """Generated texts of one source: ``texts[article_id][candidate]``, and the (article, candidate)
    keys whose generation was empty after cleaning."""

    texts: dict[str, dict[int, str]]
    empty: set[tuple[str, int]]

    def first(self) -> dict[str, str]:
        return {a: c[min(c)] for a, c in self.texts.items() if c}


def _shard_path(directory: Path, stem: str, rank: int) -> Path:
    return directory / (f"{stem}.jsonl" if rank == 0 else f"{stem}.rank{rank}.jsonl")


def _shard_files(directory: Path, stem: str) -> tuple[list[Path], list[Path]]:
    files = sorted(directory.glob(f"{stem}.jsonl")) + sorted(directory.glob(f"{stem}.rank*.jsonl"))
    out = [p for p in files if not p.name.endswith(".failures.jsonl")]
    fails = sorted(directory.glob(f"{stem}.failures.jsonl")) + sorted(directory.glob(f"{stem}.rank*.failures.jsonl"))
    return out, fails


def read_generated(directory: Path, stem: str, source: str) -> Generated:
    """Rows of ``source`` from every shard file of ``stem`` (duplicates of a key: the first wins)."""
    from selfrec_ft.jsonl import read_jsonl_rows

    files, fails = _shard_files(directory, stem)
    texts: dict[str, dict[int, str]] = {}
    for path in files:
        for row in read_jsonl_rows(path):
            if row.get("source") == source:
                texts.setdefault(str(row["id"]), {}).setdefault(int(row.get("candidate", 0)), row["summary"])
    empty = set()
    for path in fails:
        for row in read_jsonl_rows(path):
            key = (str(row["id"]), int(row.get("candidate", 0)))
            if row.get("source") == source and key[1] not in texts.get(key[0], {}):
                empty.add(key)
    return Generated(texts, empty)


def generate_sharded(policy, corpus, article_ids: Sequence[str], source: str, directory: Path, stem: str,
                     settings: GenerationSettings) -> Generated:
    """Generate the missing ``source`` summaries of ``article_ids`` with ``policy`` (``(model,
    tokenizer)``) into ``directory/stem*.jsonl``.

    With several processes each generates a share of the articles into its own file; all then read
    every file. Keys already present in any file are not generated again.
    """
    from accelerate import PartialState

    from selfrec_ft.generation.generate import generate_summaries

    s = settings
    state = PartialState()
    directory.mkdir(parents=True, exist_ok=True)
    have = read_generated(directory, stem, source)
    todo = [a for a in article_ids
            if any(k not in have.texts.get(a, {}) for k in range(s.num_return_sequences))]
    mine = todo[state.process_index::state.num_processes]
    if mine:
        generate_summaries(tuple(policy), corpus, source, prompt_preset=s.preset, domain=s.style,
                           max_new_tokens=s.max_new_tokens, batch_size=s.batch_size, article_ids=mine,
                           max_length=s.max_length, sample=s.sample, temperature=s.temperature, top_p=s.top_p,
                           num_return_sequences=s.num_return_sequences, seed=s.seed,
                           out=_shard_path(directory, stem, state.process_index),
                           progress=s.progress and state.is_main_process)
    state.wait_for_everyone()
    got = read_generated(directory, stem, source)
    wanted = set(article_ids)
    return Generated({a: t for a, t in got.texts.items() if a in wanted}, {k for k in got.empty if k[0] in wanted})


def attribute_values(prop, generated: Generated, article_ids: Sequence[str]) -> tuple[dict[str, float], int]:
    """The attribute of each article's (greedy) summary; an empty generation counts as the empty
    text (for ``lengthy``: 0 words). Returns the values and the number of empty summaries."""
    texts = generated.first()
    values, n_empty = {}, 0
    for aid in article_ids:
        if aid in texts:
            values[aid] = prop.measure(texts[aid])
        elif (aid, 0) in generated.empty:
            values[aid] = prop.measure("")
            n_empty += 1
    return values, n_empty
