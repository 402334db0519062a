"""One generic registry for every kind of component (backbones, heads, datasets, ...).

A registry maps a name to a factory (a class or a function). Registering a name twice raises,
so two modules can never silently shadow each other; looking up an unknown name raises with the
list of known names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """A name -> factory mapping for one kind of component.

    Example:
        >>> MODELS = Registry("model")
        >>> @MODELS.register("tiny")
        ... def tiny(**kw): ...
        >>> MODELS.build("tiny")
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None, obj: T | None = None) -> Any:
        """Register ``obj`` under ``name``; without ``obj`` return a decorator.

        Raises:
            ValueError: if ``name`` is already registered.
        """

        def _add(o: T) -> T:
            key = name or o.__name__
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[key] = o
            return o

        if obj is not None:
            return _add(obj)
        return _add

    def get(self, name: str) -> T:
        """Return the factory registered as ``name``; an unknown name raises KeyError naming it."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the factory registered as ``name`` with the given arguments."""
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` that import each public name from its module on first use (PEP 562).

    Args:
        package: the package's ``__name__``.
        exports: public name -> the module defining it, absolute or relative to ``package`` (a leading ".").

    Example:
        >>> __getattr__, __dir__ = lazy_exports(__name__, {"Face": ".face"})
    """
    namespace = importlib.import_module(package).__dict__

    def get(name: str) -> Any:
        if name in exports:
            module = exports[name]
            value = getattr(importlib.import_module(module if not module.startswith(".") else package + module), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def names() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return get, names
