"""A small registry by name, shared by embedders, fusion schemes and model presets.

Lookups of an unknown name fail with a one-line ``KeyError`` that lists what exists, so a typo on
the command line tells the user the valid names. Besides fixed names a registry may hold families
of names, ``prefix:<rest>``, whose items are built on demand (``timm:<name>``: one registration
for timm's ~1,400 models); ``names()`` lists the fixed names, ``families()`` the families.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown registry name; ``str()`` is the one-line message (KeyError's repr quotes it)."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._families: dict[str, tuple[Callable[[str], T], str]] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def register_prefix(self, prefix: str, resolve: Callable[[str], T], *, help: str) -> None:
        """A family of names ``prefix:<rest>``: ``get`` returns ``resolve(rest)``, which raises
        ``UnknownNameError`` for a name outside the family (and caches, if building is costly).
        ``help`` says in a few words what the family holds."""
        if prefix in self._families or ":" in prefix:
            raise ValueError(f"{self.kind} family {prefix!r} is already registered or has a ':'")
        self._families[prefix] = (resolve, help)

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        prefix, sep, rest = name.partition(":")
        if sep and prefix in self._families:
            return self._families[prefix][0](rest)
        valid = ", ".join(sorted(self._items))
        families = "".join(f", or {p}:<name> ({h})" for p, (_, h) in self._families.items())
        raise UnknownNameError(f"unknown {self.kind} {name!r}; valid: {valid}{families}")

    def names(self) -> list[str]:
        return sorted(self._items)

    def families(self) -> dict[str, str]:
        """Each family's prefix and what it holds."""
        return {p: h for p, (_, h) in sorted(self._families.items())}

    def __contains__(self, name: object) -> bool:
        if name in self._items:
            return True
        if not isinstance(name, str) or name.partition(":")[0] not in self._families:
            return False
        try:
            self.get(name)
        except UnknownNameError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
