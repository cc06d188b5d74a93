"""One generic name -> component registry (timm's API, with datasette's duplicate rule)."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from robust_distill.errors import RegistryError

__all__ = ["Registry", "Entry", "DuplicateNameError", "UnknownNameError", "RegistryError"]

T = TypeVar("T")


class DuplicateNameError(RegistryError):
    """Two plugins registered the same name in one registry; the one that registered second is blamed.

    Plugins register in load order (core, built-in, then third-party plugins), so a third-party plugin reusing a
    built-in name is the one named as registering it second.
    """

    def __init__(self, kind: str, name: str, first: Entry[Any], second_plugin: str,
                 second_distribution: str = "<unknown>") -> None:
        self.kind, self.name, self.first_plugin, self.second_plugin = kind, name, first.plugin, second_plugin
        if first.plugin == second_plugin:
            message = (f"Plugin {second_plugin!r} (distribution {second_distribution}) registers the {kind} {name!r} "
                       "twice. Give the second one another name.")
        else:
            message = (
                f"Plugin {second_plugin!r} (distribution {second_distribution}) registers the {kind} {name!r}, "
                f"which {first.describe_source()} registered first. Names must be unique across plugins: rename "
                f"one of them, or keep one plugin: RD_DISABLED_PLUGINS={second_plugin} keeps "
                f"{first.plugin!r}'s {kind}, RD_DISABLED_PLUGINS={first.plugin} keeps {second_plugin!r}'s (each "
                "also drops everything else the disabled plugin provides)."
            )
        super().__init__(message)


class UnknownNameError(RegistryError, KeyError):
    """A name that no plugin registered."""

    def __init__(self, kind: str, name: str, choices: list[str]) -> None:
        self.kind, self.name, self.choices = kind, name, choices
        close = difflib.get_close_matches(name, choices, n=3, cutoff=0.7)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(choices) if choices else "(none registered)"
        plural = kind + ("es" if kind.endswith("s") else "s")
        super().__init__(
            f"Unknown {kind} {name!r}.{hint} Registered {plural}: {listing}. "
            "Run `robust-distill plugins` to see every part and the plugin that provides it."
        )

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered component and where it came from."""

    name: str
    obj: T
    plugin: str
    distribution: str
    help: str

    def describe_source(self) -> str:
        return f"plugin {self.plugin!r} (distribution {self.distribution})"


class Registry(Generic[T]):
    """Named components of one kind, filled once at start-up by ``rd_register_*`` hooks.

    >>> r = Registry("loss")
    >>> r.register(len, name="length", help="counts things")
    >>> r.get("length")([1, 2])
    2
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._plugin = "<direct>"
        self._distribution = "<unknown>"

    # -- filled by the plugin manager -------------------------------------------------------------
    def _set_source(self, plugin: str, distribution: str) -> None:
        """Attribute the following registrations to ``plugin`` (set by the plugin manager)."""
        self._plugin, self._distribution = plugin, distribution

    def register(self, obj: T | None = None, *, name: str | None = None, help: str | None = None) -> Any:
        """Register ``obj`` under ``name`` (default: its ``name`` attribute, else ``__name__``).

        Usable directly (``registry.register(MyLoss, name="my_loss")``) or as a decorator
        (``@registry.register(name="my_loss")``). Raises :class:`DuplicateNameError` naming both plugins
        when the name is taken.
        """
        if obj is None:
            return lambda o: self.register(o, name=name, help=help)
        key = name or getattr(obj, "name", None) or getattr(obj, "__name__", None)
        if not isinstance(key, str) or not key:
            raise RegistryError(f"Plugin {self._plugin!r} cannot register {obj!r} as a {self.kind}: give it a name=.")
        if key in self._entries:
            raise DuplicateNameError(self.kind, key, self._entries[key], self._plugin, self._distribution)
        doc = help if help is not None else (getattr(obj, "summary", None) or getattr(obj, "__doc__", None) or "")
        doc = doc.strip().split("\n")[0]
        self._entries[key] = Entry(key, obj, self._plugin, self._distribution, doc)
        return obj

    # -- lookups ----------------------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The component registered as ``name``; :class:`UnknownNameError` lists the valid names."""
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        """The :class:`Entry` of ``name``: the component and the plugin and distribution that registered it."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def create(self, name: str, /, **kwargs: Any) -> Any:
        """Instantiate/call the component ``name`` with ``kwargs`` (``None`` values are dropped)."""
        factory: Callable[..., Any] = self.get(name)  # type: ignore[assignment]
        return factory(**{k: v for k, v in kwargs.items() if v is not None})

    def build(self, name: str, kwargs: Mapping[str, Any], /, **provided: Any) -> Any:
        """Call the factory ``name`` with the user's ``kwargs`` plus the ``provided`` arguments it declares.

        ``provided`` are values the engine knows (``num_classes``, ``epochs``, ``eps``); a factory receives
        one only if its signature names it (or takes ``**kwargs``) and the user did not set it.
        """
        factory = self.get(name)
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        extra = {k: v for k, v in provided.items() if (k in params or takes_any) and k not in kwargs}
        return factory(**kwargs, **extra)

    def names(self, pattern: str = "*") -> list[str]:
        """The registered names matching the shell-style ``pattern``, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def entries(self) -> list[Entry[T]]:
        """Every :class:`Entry`, sorted by name."""
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
