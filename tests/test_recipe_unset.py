"""Issue 22: `--KEY none` (or `null`) clears an optional key a recipe's YAML set, tested on the
hook's corpus keys; and a hook corpus that is the training corpus file never scores a training article."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from selfrec_ft.errors import UserError


def _parse(tmp_path, yaml_text: str, argv: list[str]):
    from selfrec_ft.scripts.sft import make_parser
    from selfrec_ft.training.args import parse_args_and_config_strict

    config = tmp_path / "recipe.yaml"
    config.write_text(yaml_text)
    return parse_args_and_config_strict(make_parser(), ["--config", str(config), *argv])


RECIPE = ("model_name_or_path: m\nself_source: lead\nhook_in_domain: corpus/in\nhook_out_of_domain: corpus/ood\n"
          "hook_limit: 20\nmax_length: 512\nuse_cpu: true\nbf16: false\noutput_dir: out\n")


def test_none_on_the_command_line_clears_a_yaml_key(tmp_path):
    data, train, model, hook = _parse(tmp_path, RECIPE, [])
    assert (hook.hook_in_domain, hook.hook_out_of_domain, hook.hook_limit) == ("corpus/in", "corpus/ood", 20)
    data, train, model, hook = _parse(tmp_path, RECIPE, ["--hook_out_of_domain", "none"])
    assert hook.hook_out_of_domain is None and hook.hook_in_domain == "corpus/in"
    data, train, model, hook = _parse(tmp_path, RECIPE, ["--hook_in_domain=null", "--hook_out_of_domain", "NONE",
                                                         "--hook_limit", "none", "--max_length", "null"])
    assert (hook.hook_in_domain, hook.hook_out_of_domain, hook.hook_limit, train.max_length) == (None, None, None, None)
    # the hook is then off: no domain left to build a spec for
    from selfrec_ft.training.hook import hook_specs

    assert hook_specs(hook, data) == []
    # a flag that is not optional keeps its value "none", and the parser says what is wrong with it
    with pytest.raises(UserError, match="n_articles"):
        _parse(tmp_path, RECIPE, ["--n_articles", "none"])


def _data_args(corpus, n_articles=4):
    return SimpleNamespace(corpus=str(corpus), n_articles=n_articles, self_source="lead", others=["human"],
                           prompt_preset="compact", label_seed=0, hf_dataset=None)


def _hook_args(in_domain=None, out_of_domain=None):
    return SimpleNamespace(hook_in_domain=in_domain, hook_out_of_domain=out_of_domain, hook_others=None,
                           hook_tasks=["pairwise-recognition"], hook_limit=None)


def test_a_hook_corpus_equal_to_the_training_corpus_never_scores_a_training_article(short_corpus_dir, tmp_path,
                                                                                     capsys):
    from selfrec_ft.data.corpus import load_corpus
    from selfrec_ft.training.hook import hook_specs

    ids = [a.id for a in load_corpus(short_corpus_dir).articles]
    train_ids = set(ids[:4])
    copy = shutil.copytree(short_corpus_dir, tmp_path / "copy")  # the same file under another path
    for ood in (short_corpus_dir, copy):
        (spec,) = hook_specs(_hook_args(out_of_domain=str(ood)), _data_args(short_corpus_dir))
        scored = {a.id for a in spec.load_corpus().heldout_articles(spec.skip_first, spec.limit)}
        assert scored and not scored & train_ids and scored == set(ids[4:])
        assert "is the training corpus file" in capsys.readouterr().err
    # another corpus is used from its first article, without a note
    other = tmp_path / "other"
    shutil.copytree(short_corpus_dir, other)
    (other / "articles.jsonl").write_text((other / "articles.jsonl").read_text() + "\n")  # other bytes
    (spec,) = hook_specs(_hook_args(out_of_domain=str(other)), _data_args(short_corpus_dir))
    assert spec.skip_first == 0 and capsys.readouterr().err == ""
    # nothing left after the training articles: refused in one line
    with pytest.raises(UserError, match="no article after the 12 training articles"):
        hook_specs(_hook_args(out_of_domain=str(short_corpus_dir)), _data_args(short_corpus_dir, n_articles=12))
