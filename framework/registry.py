"""The component registry: what each plugin provides, looked up by kind and name."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError, PluginError


@dataclass(frozen=True)
class Kind:
    """One kind of component: the hook that registers it, and the config section that names
    it (None for callbacks, which ``trainer.callbacks`` lists)."""

    name: str
    hook: str
    section: str | None


#: The one table of component kinds: the registry, the plugin loader, the config and the
#: trainer all read it.
KIND_TABLE = (
    Kind("backbone", "crnnfw_register_backbones", "model.backbone"),
    Kind("encoder", "crnnfw_register_encoders", "model.encoder"),
    Kind("head", "crnnfw_register_heads", "model.head"),
    Kind("dataset", "crnnfw_register_datasets", "data"),
    Kind("callback", "crnnfw_register_callbacks", None),
)
KINDS = tuple(kind.name for kind in KIND_TABLE)
#: The model's stages, in the order a batch flows through them.
STAGES = ("backbone", "encoder", "head")


@dataclass(frozen=True)
class Component:
    """One registered component: how to build it and what options it takes."""

    kind: str
    name: str
    factory: Callable[..., Any]
    config: type
    description: str
    provider: str
    distribution: str = ""

    def options(self) -> list[dict[str, Any]]:
        """Every option (nested dataclasses flattened to dotted keys) with type, default and help."""
        return _options(self.config, "", None)


class _Required:
    """The default of a field that has none."""

    def __repr__(self) -> str:
        return "required"


REQUIRED = _Required()


def _type_name(tp: Any) -> str:
    """``int``, ``List[int]``, ``Optional[str]``: the annotation as a person writes it."""
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _field_help(cls: type) -> dict[str, str]:
    """Help for each field: ``field(metadata={"help": ...})``, else the field line's trailing comment."""
    comments: dict[str, str] = {}
    try:
        for line in inspect.getsource(cls).splitlines():
            match = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
            if match:
                comments[match.group(1)] = match.group(2).strip()
    except (OSError, TypeError):  # no source (e.g. defined in a REPL)
        pass
    return {f.name: f.metadata.get("help", comments.get(f.name, "")) for f in dataclasses.fields(cls)}


def _options(cls: type, prefix: str, defaults: Any) -> list[dict[str, Any]]:
    """``defaults``: the instance a nested dataclass field defaults to (its values win)."""
    helps = _field_help(cls)
    hints = typing.get_type_hints(cls)
    out: list[dict[str, Any]] = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        hint = hints.get(f.name, f.type)
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = REQUIRED
        if dataclasses.is_dataclass(hint):
            out += _options(hint, f"{key}.", default if default is not REQUIRED else None)
            continue
        out.append({"key": key, "type": _type_name(hint), "default": default, "help": helps[f.name]})
    return out


class DuplicateComponentError(PluginError):
    """Two plugins registered the same name for one kind: always fatal, it is ambiguous."""


def suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """A ' did you mean ...?' hint, or an empty string when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


class Registry:
    """Components by kind and name; a name may be registered once per kind."""

    def __init__(self) -> None:
        self._components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}

    def add(
        self,
        kind: str,
        name: str,
        factory: Callable[..., Any],
        *,
        config: type,
        description: str = "",
        provider: str,
        distribution: str = "",
    ) -> None:
        """Record a component; a second provider of the same name is an error naming both.

        An invalid registration raises ValueError or TypeError, reported as that plugin's failure.
        """
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"registered {kind} {name!r}: a name must be an identifier")
        if not callable(factory):
            raise TypeError(f"registered {kind} '{name}' with a factory that is not callable")
        if not dataclasses.is_dataclass(config) or not isinstance(config, type):
            raise TypeError(f"registered {kind} '{name}': config must be a dataclass type")
        existing = self._components[kind].get(name)
        if existing is not None:
            raise DuplicateComponentError(
                f"{kind} '{name}' is registered twice: by plugin '{existing.provider}' ({existing.distribution}) "
                f"and by plugin '{provider}' ({distribution}); uninstall one or block it with CRNNFW_BLOCK_PLUGINS"
            )
        self._components[kind][name] = Component(kind, name, factory, config, description, provider, distribution)

    def get(self, kind: str, name: str, *, key: str | None = None) -> Component:
        """The component, or a ConfigError with a suggestion and the list of names."""
        names = self.names(kind)
        found = self._components[kind].get(name)
        if found is None:
            where = f"{key}: " if key else ""
            listing = ", ".join(names) if names else "none are registered"
            raise ConfigError(f"{where}unknown {kind} '{name}'{suggest(str(name), names)} (available: {listing})")
        return found

    def names(self, kind: str) -> list[str]:
        """Registered names of one kind, sorted."""
        return sorted(self._components[kind])

    def all(self) -> list[Component]:
        """Every component, by kind then name."""
        return [self._components[kind][name] for kind in KINDS for name in self.names(kind)]
