"""The seams: one registry per kind of plug-in, each entry one module.

A registry maps names to entries of one kind: capability suites (``iterdpo/suites/``), worlds
(``iterdpo/worlds/``), sampler backends (``iterdpo/samplers/``) and pairing strategies
(``iterdpo/strategies/``). An entry registers itself when its module is imported, and the registry imports
every module of its package the first time it is asked for a name, so adding an entry is adding one
module, and nothing else. The config reads its choices from here (never a copied list), so a misspelt
name fails when the config is built. A test can register a throwaway entry from its own module.

This module imports nothing of the package: the discovery is by name, at the first look-up.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Iterator


class Registry:
    """Named entries of one kind, discovered from the modules of `package` on the first look-up."""

    def __init__(self, kind: str, package: str):
        self.kind, self.package = kind, package
        self._entries: dict[str, Any] = {}
        self._loaded = False

    def register(self, name: str, entry: Any = None) -> Any:
        """Register `entry` under `name`; without `entry`, a decorator that registers what it decorates."""
        if entry is None:
            def deco(obj: Callable) -> Callable:
                self.register(name, obj)
                return obj
            return deco
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove `name` (a test's throwaway entry)."""
        self._entries.pop(name, None)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> list[str]:
        self._load()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __getitem__(self, name: str) -> Any:
        self._load()
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {list(self._entries)}")
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return repr(self.names())


SUITES = Registry("capability suite", "iterdpo.suites")
WORLDS = Registry("world", "iterdpo.worlds")
SAMPLERS = Registry("sampler backend", "iterdpo.samplers")
STRATEGIES = Registry("pairing strategy", "iterdpo.strategies")
