"""Plugin discovery and loading on pluggy; builds the component registry.

Plugins come from the ``crnnfw`` entry-point group (crnnfw's own built-ins too) and from
:func:`register_plugin` for code that is not installed (notebooks, tests). A plugin that
fails to import or register is recorded and reported, not fatal, unless strict mode is on.

Environment:

- ``CRNNFW_STRICT_PLUGINS=1``: a failing plugin is an error.
- ``CRNNFW_DISABLE_PLUGIN_AUTOLOAD=1``: load only crnnfw's own built-ins from entry points.
- ``CRNNFW_BLOCK_PLUGINS=a,b``: skip the entry points (or distributions) with these names.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, first_line
from .registry import KIND_TABLE, KINDS, DuplicateComponentError, Registry, suggest

ENTRY_POINT_GROUP = "crnnfw"
HOOKS = {kind.name: kind.hook for kind in KIND_TABLE}


@dataclass
class PluginInfo:
    """A loaded (or failed) plugin and where it came from."""

    name: str
    distribution: str
    version: str
    error: str | None = None
    components: list[tuple[str, str]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The distribution and its version, e.g. ``crnnfw-resnet 0.1.0``."""
        return f"{self.distribution} {self.version}" if self.version != "-" else self.distribution


@dataclass
class PluginHost:
    """The pluggy manager, the registry it filled, and what was loaded or failed."""

    manager: pluggy.PluginManager
    registry: Registry
    plugins: list[PluginInfo]

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]


_extra_plugins: list[tuple[str, Any]] = []
_host: PluginHost | None = None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Add a plugin object that is not installed as a distribution (e.g. a module in a notebook).

    Takes effect on the next :func:`get_host` call (the registry is rebuilt).
    """
    name = name or getattr(plugin, "__name__", repr(plugin))
    _extra_plugins[:] = [(n, p) for n, p in _extra_plugins if n != name]  # re-running a notebook cell replaces it
    _extra_plugins.append((name, plugin))
    reset()


def unregister_plugin(name: str) -> None:
    """Remove a plugin added with :func:`register_plugin`."""
    _extra_plugins[:] = [(n, p) for n, p in _extra_plugins if n != name]
    reset()


def reset() -> None:
    """Forget the loaded plugins so that the next :func:`get_host` loads them again."""
    global _host
    _host = None


def get_host() -> PluginHost:
    """Load every plugin once per process and return the host."""
    global _host
    if _host is None:
        _host = _load()
    return _host


def get_registry() -> Registry:
    """The registry of every loaded component."""
    return get_host().registry


def _fail(info: PluginInfo, what: str, exc: BaseException) -> None:
    info.error = f"{what}: {type(exc).__name__}: {_reason(exc)}"
    if _env_flag("CRNNFW_STRICT_PLUGINS"):
        raise PluginError(f"plugin '{info.name}' ({info.distribution}) {info.error}") from exc
    print(f"crnnfw: warning: plugin '{info.name}' ({info.distribution}) {info.error}", file=sys.stderr)


def _reason(exc: BaseException) -> str:
    """One line for a plugin's failure. pluggy's validation errors put the reason on later lines
    (an argument the hook does not have, an unknown hook): keep it, and suggest the hook meant."""
    if not isinstance(exc, pluggy.PluginValidationError):
        return first_line(exc)
    text = " ".join(str(exc).split())
    found = re.search(r"unknown hook '(\w+)'", text)
    return text + (suggest(found.group(1), list(HOOKS.values())) if found else "")


def _candidates() -> list[tuple[PluginInfo, Any]]:
    """Entry points (as (info, loader)) and extra plugin objects, in a stable order."""
    blocked = {b.strip() for b in os.environ.get("CRNNFW_BLOCK_PLUGINS", "").split(",") if b.strip()}
    own_only = _env_flag("CRNNFW_DISABLE_PLUGIN_AUTOLOAD")
    found: list[tuple[PluginInfo, Any]] = []
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.dist.name if e.dist else "", e.name)):
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        if ep.name in blocked or dist in blocked or (own_only and dist != "crnnfw"):
            continue
        found.append((PluginInfo(ep.name, dist, version), ep.load))
    for name, obj in _extra_plugins:
        if name not in blocked:
            found.append((PluginInfo(name, "registered in code", "-"), lambda obj=obj: obj))
    return found


def _load() -> PluginHost:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    registry = Registry()
    infos: list[PluginInfo] = []
    for info, load in _candidates():
        infos.append(info)
        try:
            plugin = load()
            manager.register(plugin, name=info.name)
        except Exception as exc:  # a broken plugin must not break the host
            _fail(info, "failed to load", exc)
            continue
        try:
            manager.check_pending()  # a misspelled hook name would otherwise be ignored
        except pluggy.PluginValidationError as exc:
            manager.unregister(plugin)
            _fail(info, "implements an unknown hook", exc)
            continue
        try:
            _register_components(manager, registry, plugin, info)
        except DuplicateComponentError:
            raise
        except Exception as exc:
            _fail(info, "failed to register", exc)
    return PluginHost(manager, registry, infos)


def _register_components(manager: pluggy.PluginManager, registry: Registry, plugin: Any, info: PluginInfo) -> None:
    """Call this plugin's registration hooks alone, so each component knows its provider."""
    for kind in KINDS:
        caller = manager.subset_hook_caller(HOOKS[kind], remove_plugins=[p for p in manager.get_plugins() if p is not plugin])

        def register(name: str, factory: Any, *, config: type, description: str = "", _kind: str = kind) -> None:
            registry.add(_kind, name, factory, config=config, description=description, provider=info.name, distribution=info.label)
            info.components.append((_kind, name))

        caller(register=register)
