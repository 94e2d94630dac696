"""The recipes' default configs: the CPU demo YAMLs under ``recipes/demo/`` of the repository.

They ship with the repository, not inside the package; they are found next to the package's source
(a checkout on ``PYTHONPATH`` or an editable install), whatever the working directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from selfrec_ft.errors import UserError

REPOSITORY = Path(__file__).resolve().parents[2]
"""The directory holding ``selfrec_ft/`` (a source checkout: it also holds ``recipes/``)."""
DEMO_DIR = REPOSITORY / "recipes" / "demo"


def demo_config(name: str) -> Path:
    """``recipes/demo/<name>`` of the repository this package runs from; a one-line
    :class:`UserError` when the package was installed without the repository."""
    path = DEMO_DIR / name
    if not path.is_file():
        raise UserError(f"no --config given and the demo config recipes/demo/{name} is not next to this "
                        f"installation ({REPOSITORY}): it ships with the selfrec_ft repository; pass --config FILE")
    return path


def asks_for_help(argv: Sequence[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def default_config(argv: Sequence[str], name: str) -> Path | None:
    """The demo config ``name`` when ``argv`` has neither ``--config`` nor ``-h``/``--help``."""
    if asks_for_help(argv) or any(a == "--config" or a.startswith("--config=") for a in argv):
        return None
    return demo_config(name)
