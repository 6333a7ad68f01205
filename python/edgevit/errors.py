"""Error types. Every user-facing failure is an :class:`EdgevitError` whose message is one line:
where (file or key), what is wrong, and what to do. The CLI prints it without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EdgevitError(Exception):
    """A failure the user can act on; ``str(err)`` is a single line."""


class UnknownKeyError(EdgevitError, KeyError):
    """A registry lookup with a key that is not registered."""

    def __init__(self, kind: str, key: str, known: Iterable[str]):
        known = sorted(known)
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else f"known: {', '.join(known)}"
        super().__init__(f"unknown {kind} {key!r}; {hint}")
        self.key = key
        self.suggestions = close

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return str(self.args[0])


class MissingDependencyError(EdgevitError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""

    def __init__(self, module: str, extra: str, purpose: str):
        super().__init__(f"{purpose} needs the Python module {module!r}; install it with: pip install 'edgevit[{extra}]'")


def require(module: str, extra: str, purpose: str):
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``extra``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module, extra, purpose) from exc
