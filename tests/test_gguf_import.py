"""`selfrec model import-gguf`: every bad input is one `error:` line with exit status 2, and a failed
conversion leaves nothing behind. (The conversion of a real GGUF file is in tests/test_real_model.py.)"""

from __future__ import annotations

import numpy as np
import pytest


def _gguf(path, arch: str):
    """A small GGUF file of architecture ``arch`` (one tensor, no tokenizer), written by gguf itself."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("made-up")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _dist(site, name: str, files: list[str]):
    """An installed distribution ``name`` 1.0 under ``site`` whose RECORD lists ``files`` (created)."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in files))
    for f in files:
        (site / f).parent.mkdir(parents=True, exist_ok=True)
        (site / f).write_bytes(b"not a GGUF file")


def _run(capsys, *argv) -> str:
    from selfrec_ft.cli import main

    rc = main(["model", "import-gguf", *map(str, argv)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_bad_files(tmp_path, capsys):
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 a zip, not a GGUF file")
    out = tmp_path / "out"
    assert "not a GGUF file" in _run(capsys, not_gguf, "--out", out)
    assert "GGUF file not found" in _run(capsys, tmp_path / "missing.gguf", "--out", out)
    assert "not a file" in _run(capsys, tmp_path, "--out", out)
    assert "name a GGUF file or --package" in _run(capsys, "--out", out)
    err = _run(capsys, _gguf(tmp_path / "rwkv.gguf", "rwkv-made-up"), "--out", out)
    assert "transformers cannot read GGUF architecture 'rwkv-made-up'" in err and "llama" in err
    assert not out.exists()


def test_out_must_be_new_or_empty(tmp_path, capsys):
    src = _gguf(tmp_path / "rwkv.gguf", "rwkv-made-up")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert "--out exists and is not empty" in _run(capsys, src, "--out", tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert "--out exists and is not a directory" in _run(capsys, src, "--out", tmp_path / "full" / "keep.txt")
    (tmp_path / "empty").mkdir()  # an empty directory is taken (the architecture is what fails here)
    assert "cannot read GGUF architecture" in _run(capsys, src, "--out", tmp_path / "empty")


def test_a_conversion_that_fails_leaves_nothing_behind(tmp_path):
    """A llama GGUF without a tokenizer gets past the checks and fails inside transformers, after the
    temporary directory was made: the command ends in one error line (transformers may warn before
    it), and neither --out nor a partial directory stays."""
    import os
    import subprocess
    import sys

    (tmp_path / "src").mkdir()
    src = _gguf(tmp_path / "src" / "llama.gguf", "llama")
    parent = tmp_path / "models"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "selfrec_ft", "model", "import-gguf", str(src), "--out",
                           str(parent / "m")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {src}: transformers cannot convert this GGUF "
                                                          "file (Cannot build a tokenizer")
    assert list(parent.iterdir()) == []


def test_packages(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert "package 'no-such-dist-xyz' is not installed" in _run(capsys, "--package", "no-such-dist-xyz",
                                                                  "--out", out)
    site = tmp_path / "site"
    _dist(site, "nogguf", ["nogguf/__init__.py"])
    _dist(site, "twogguf", ["twogguf/a.Q4.gguf", "twogguf/b.Q8.gguf", "twogguf/__init__.py"])
    _dist(site, "gonegguf", ["gonegguf/x.gguf"])
    (site / "gonegguf" / "x.gguf").unlink()
    monkeypatch.syspath_prepend(str(site))
    assert "package nogguf 1.0 ships no .gguf file" in _run(capsys, "--package", "nogguf", "--out", out)
    err = _run(capsys, "--package", "twogguf", "--out", out)
    assert "ships 2 GGUF files (twogguf/a.Q4.gguf, twogguf/b.Q8.gguf); name one" in err
    assert "no GGUF file named 'c.gguf'" in _run(capsys, "c.gguf", "--package", "twogguf", "--out", out)
    # a choice by file name picks that file, which is then read (and found not to be GGUF)
    err = _run(capsys, "b.Q8.gguf", "--package", "twogguf", "--out", out)
    assert "b.Q8.gguf: not a GGUF file" in err
    assert "lists gonegguf/x.gguf but the file is missing" in _run(capsys, "--package", "gonegguf", "--out", out)
    assert not out.exists()


def test_a_gguf_file_given_as_a_model_says_how_to_convert_it(tmp_path):
    from selfrec_ft.errors import UserError
    from selfrec_ft.models.loading import check_model_dir

    src = _gguf(tmp_path / "m.gguf", "llama")
    with pytest.raises(UserError, match="a GGUF file, not a model directory: convert it once with selfrec model "
                                        "import-gguf"):
        check_model_dir(src)
