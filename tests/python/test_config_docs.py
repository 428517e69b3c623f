"""docs/configuration.md must be exactly what the config registry generates, so the
reference can never drift from the code that parses the keys."""

from __future__ import annotations

import difflib
from pathlib import Path

import switchyard
from switchyard.config import DOCS_MARKER, render_docs

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
REGENERATE = "python -m switchyard.config docs --write docs/configuration.md"


def test_configuration_md_matches_the_generator():
    current = DOCS.read_text(encoding="utf-8")
    assert DOCS_MARKER in current, f"{DOCS} lost its generator marker line; restore it:\n{DOCS_MARKER}"
    wanted = render_docs(current)
    if current != wanted:
        diff = "".join(list(difflib.unified_diff(current.splitlines(True), wanted.splitlines(True),
                                                 "docs/configuration.md", "generated"))[:60])
        raise AssertionError(f"docs/configuration.md is out of date with the config registry; "
                             f"regenerate it with:\n    {REGENERATE}\n\n{diff}")


def test_every_key_is_documented():
    text = DOCS.read_text(encoding="utf-8")
    for section, keys in switchyard.Config().to_dict().items():
        assert f"### `{section}`" in text
        for key in keys:
            assert f"| `{section}.{key}` |" in text, f"{section}.{key} missing; run {REGENERATE}"
