"""A small generic registry: one instance per concept (models, datasets, metrics, ...).

Unknown keys raise :class:`~edgevit.errors.UnknownKeyError` with close matches; registering a key
twice is a programming error."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import UnknownKeyError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, key: str, item: T) -> T:
        if key in self._items:
            raise ValueError(f"{self.kind} {key!r} is registered twice")
        self._items[key] = item
        return item

    def register(self, key: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda item: self.add(key, item)

    def get(self, key: str) -> T:
        try:
            return self._items[key]
        except KeyError:
            raise UnknownKeyError(self.kind, key, self._items) from None

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted keys matching a shell-style ``pattern``."""
        return sorted(k for k in self._items if fnmatch.fnmatchcase(k, pattern))

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)
