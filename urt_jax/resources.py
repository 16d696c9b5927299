"""Files that ship inside the package (configs, prompt templates, the demo tokenizer), and how a
relative path a user gives is found: where it is, else next to the config that names it, else
in the package. So ``urt-jax run configs/demo.yaml`` works from any directory once installed.
"""

from __future__ import annotations

import os

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
CONFIG_DIR = os.path.join(PACKAGE_DIR, "configs")
DEMO_TOKENIZER_DIR = os.path.join(PACKAGE_DIR, "assets", "tokenizer")
TINY_MODEL_CONFIG = os.path.join(CONFIG_DIR, "model", "tiny.yaml")
DEFAULT_TEMPLATES = os.path.join(CONFIG_DIR, "templates", "unifiedreward_think.yaml")


def packaged(path: str) -> str | None:
    """The shipped file a relative path names (``configs/...`` or a path inside the package),
    or None."""
    if os.path.isabs(path):
        return None
    candidate = os.path.join(PACKAGE_DIR, path)
    return candidate if os.path.exists(candidate) else None


def resolve_input(path: str, base: str | None = None) -> str:
    """An existing file or directory for ``path``: as given (relative to the working directory),
    else relative to ``base``, else shipped in the package. A path found nowhere is returned as
    given, so that the error that follows names what the user wrote."""
    path = os.path.expanduser(path)
    if os.path.isabs(path) or os.path.exists(path):
        return path
    if base is not None and os.path.exists(os.path.join(base, path)):
        return os.path.join(base, path)
    return packaged(path) or path
