"""record_settings: the one check that a resumable directory (eval, DPO generations, steering
sweeps) is resumed with the settings it was made with."""

import json

import pytest

from selfrec_ft.errors import UserError
from selfrec_ft.jsonl import record_settings

HELD, HINT = "this directory holds an evaluation", "use another --out"


def test_first_run_writes_later_runs_compare(tmp_path):
    path = tmp_path / "cfg.json"
    record_settings(path, {"model": "m", "layers": (0, 1)}, HELD, HINT)
    assert json.loads(path.read_text()) == {"model": "m", "layers": [0, 1]}
    record_settings(path, {"model": "m", "layers": (0, 1)}, HELD, HINT)  # a tuple equals its JSON list
    with pytest.raises(UserError) as err:
        record_settings(path, {"model": "other", "layers": (0, 1)}, HELD, HINT)
    assert str(err.value).endswith(f"{HELD} with model='m', not 'other'; {HINT}") and str(path) in str(err.value)


def test_keys_the_file_lacks_only_count_when_strict(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"model": "m"}))
    record_settings(path, {"model": "m", "new_key": 1}, HELD, HINT)
    assert json.loads(path.read_text()) == {"model": "m"}  # an existing file is never rewritten
    with pytest.raises(UserError, match="with new_key=None, not 1"):
        record_settings(path, {"model": "m", "new_key": 1}, HELD, HINT, strict=True)


def test_write_false_checks_without_writing(tmp_path):
    path = tmp_path / "cfg.json"
    record_settings(path, {"a": 1}, HELD, HINT, write=False)
    assert not path.exists()


@pytest.mark.parametrize("content, message", [
    (b'{"model": "m",\n', "malformed JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"model": "\xff"}', "not valid UTF-8"),
])
def test_a_damaged_settings_file_is_one_line(tmp_path, content, message):
    path = tmp_path / "cfg.json"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        record_settings(path, {"model": "m"}, HELD, HINT)
    assert "\n" not in str(err.value)
