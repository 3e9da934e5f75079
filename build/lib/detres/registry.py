"""A name -> builder registry for the things users pick by name (backbones, datasets,
evaluators). Builders are plain keyword-only functions, registered explicitly."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from detres.utils.errors import UnknownNameError

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """A dict of name -> builder that refuses duplicate names and names the choices on a miss."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}

    def register(self, name: str | None = None) -> Callable[[F], F]:
        """Decorator: ``@REG.register()`` uses the function name; ``register("x")`` sets it."""

        def deco(fn: F) -> F:
            self.add(name or fn.__name__, fn)
            return fn

        return deco

    def add(self, name: str, fn: Callable[..., Any]) -> None:
        if name in self._builders:
            raise KeyError(f"{self.kind} {name!r} is already registered")
        self._builders[name] = fn

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._builders[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._builders))}"
            ) from None

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._builders)
