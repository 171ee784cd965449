"""One small registry for methods and tasks: built-in modules of a package, plus Python entry points, so a third
party adds a method or task from its own package (entry-point groups `decodebench.methods`, `decodebench.tasks`)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from core.errors import BenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named classes of one kind. Built-ins register themselves (`@REGISTRY.register`) when their modules are
    imported; on first lookup every module of `package` is imported and every entry point of `group` loaded."""

    def __init__(self, kind: str, package: str, group: str) -> None:
        self.kind, self.package, self.group = kind, package, group
        self._items: dict[str, type[T]] = {}
        self._loaded = False

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: add `cls` under `cls.name`; a second class under the same name is an error."""
        name = cls.name  # type: ignore[attr-defined]
        existing = self._items.get(name)
        if existing is not None and _qualified(existing) != _qualified(cls):
            raise BenchError(f"{self.kind} {name!r} is registered twice: {_qualified(existing)} and {_qualified(cls)}")
        self._items[name] = cls
        return cls

    def load(self) -> None:
        """Import the built-in modules and the entry points (once)."""
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__, self.package + "."):
            importlib.import_module(module.name)
        for point in entry_points(group=self.group):
            try:
                loaded = point.load()
            except Exception as exc:
                raise BenchError(f"{self.kind} plugin {point.name!r} ({point.value}) failed to load: {exc}") from exc
            if isinstance(loaded, type):
                self.register(loaded)

    def get(self, name: str) -> type[T]:
        self.load()
        if name not in self._items:
            raise BenchError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}")
        return self._items[name]

    def __iter__(self) -> Iterator[tuple[str, type[T]]]:
        self.load()
        return iter(sorted(self._items.items()))


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
