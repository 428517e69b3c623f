"""Typed, validated run configuration (see docs/configuration.md).

The configuration lives in C++ (``csrc/switchyard/config``): one registry of keys drives
parsing, validation, the YAML dump, this Python view and the generated reference. This
module only re-exports it::

    cfg = switchyard.load_config("configs/demo.yaml", overrides=["moe.top_k=1"])
    cfg.moe.top_k            # 1
    cfg.source_of("moe.top_k")  # '--set moe.top_k=1'
    cfg.to_dict(); cfg.to_yaml(); cfg.fingerprint()

Errors raise :class:`ConfigError` (a ``ValueError``) whose message names the file and line
(or the ``--set`` override) and the key, e.g.
``configs/x.yaml:12: moe.top_k: expected an integer, got "two"``.

Command line: ``python -m switchyard.config check FILE [--set K=V ...] [--dump]`` and
``python -m switchyard.config docs [--write docs/configuration.md]``.
"""

from __future__ import annotations

import os
from typing import Iterable, Union

from .. import _C

# bind_config() may have been given _C itself or a submodule of it.
_native = getattr(_C, "config", _C)

Config = _native.Config
ConfigSection = _native.ConfigSection
ConfigError = _native.ConfigError

PathLike = Union[str, "os.PathLike[str]"]

# docs/configuration.md: hand-written text above this line, generated reference below it.
DOCS_MARKER = (
    "<!-- Everything below is generated from the config registry by "
    "`python -m switchyard.config docs --write docs/configuration.md`. Do not edit it by hand. -->"
)


def load_config(path: PathLike, overrides: Iterable[str] = ()) -> Config:
    """Read and validate the YAML config at ``path``, then apply ``section.key=value``
    overrides (values are YAML: ``moe.top_k=2``, ``launch.hosts=[a:2, b:2]``)."""
    return _native.load_config(os.fspath(path), list(overrides))


def loads_config(text: str, source: str = "<string>", overrides: Iterable[str] = ()) -> Config:
    """Like :func:`load_config` for YAML text; ``source`` stands for the file in messages."""
    return _native.loads_config(text, source, list(overrides))


def reference_markdown() -> str:
    """The generated markdown reference of every key and cross-key rule."""
    return _native.config_reference_markdown()


def render_docs(current: str) -> str:
    """``current`` (the text of docs/configuration.md) with everything after
    :data:`DOCS_MARKER` replaced by the generated reference."""
    if DOCS_MARKER not in current:
        raise ValueError("the docs file has no generator marker line; expected:\n" + DOCS_MARKER)
    intro = current.split(DOCS_MARKER, 1)[0]
    return intro + DOCS_MARKER + "\n\n" + reference_markdown()


__all__ = [
    "Config",
    "ConfigError",
    "ConfigSection",
    "DOCS_MARKER",
    "load_config",
    "loads_config",
    "reference_markdown",
    "render_docs",
]
