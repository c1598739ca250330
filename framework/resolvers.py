"""What a config may read from outside itself, and what crnnfw never writes down.

The rule: while crnnfw resolves a config (``run``, ``config``, ``data``, ``eval`` ...), the
resolvers that read the environment or decode strings into config (``${oc.env:...}``,
``${oc.decode:...}``) are refused unless the command was given ``--allow-env``. Allowed, each
value they return is a secret for the rest of the process: every file crnnfw writes (config.yaml,
checkpoints, summary.json, train.log) and what it prints holds ``<env:NAME>`` in its place.
Interpolations are resolved once, when the config is resolved; what crnnfw stores holds no
``${...}`` for a reader to resolve (``literal``), and nothing read back from a checkpoint or a run's
config.yaml is ever interpolated. Outside crnnfw's own resolution the resolvers behave as
OmegaConf ships them.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from typing import Any, Iterator

from omegaconf import OmegaConf
from omegaconf.resolvers import oc

from .errors import ConfigError

GUARDED = ("oc.env", "oc.decode")
_MARKER = re.compile(r"<env:([A-Za-z_][A-Za-z0-9_]*)>")
#: Shorter secrets are replaced where they are a whole config value, not inside other text.
MIN_REDACTED_LENGTH = 4

_policy: contextvars.ContextVar[bool | None] = contextvars.ContextVar("crnnfw_allow_env", default=None)
_secrets: dict[str, str] = {}  # value -> the environment variable it came from


def _check(resolver: str, what: str) -> None:
    allowed = _policy.get()
    if allowed is False:
        raise ConfigError(
            f"${{{resolver}:{what}}} reads outside the config; crnnfw refuses environment and decode resolvers unless you pass --allow-env (their values are then never written to any file)"
        )


def _env(key: str, default: Any = oc._DEFAULT_MARKER_) -> str | None:
    _check("oc.env", key)
    value = oc.env(key) if default is oc._DEFAULT_MARKER_ else oc.env(key, default)
    if _policy.get() and isinstance(value, str) and value and key in os.environ:
        _secrets[value] = key
    return value


def _decode(expr: str | None, _parent_: Any, _node_: Any) -> Any:
    _check("oc.decode", str(expr))
    return oc.decode(expr, _parent_=_parent_, _node_=_node_)


OmegaConf.register_resolver("oc.env", _env, replace=True, annotation_validation="off")
OmegaConf.register_resolver("oc.decode", _decode, replace=True, annotation_validation="off")


@contextlib.contextmanager
def policy(allow_env: bool) -> Iterator[None]:
    """Resolve configs inside this block under crnnfw's rule (see the module's docstring)."""
    token = _policy.set(allow_env)
    try:
        yield
    finally:
        _policy.reset(token)


def redact(value: Any) -> Any:
    """``value`` (text, or a tree of dicts and lists) with every secret as ``<env:NAME>``."""
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    if not isinstance(value, str) or not _secrets:
        return value
    if value in _secrets:
        return f"<env:{_secrets[value]}>"
    for secret in sorted(_secrets, key=len, reverse=True):
        if len(secret) >= MIN_REDACTED_LENGTH:
            value = value.replace(secret, f"<env:{_secrets[secret]}>")
    return value


def restore(value: Any, source: str) -> Any:
    """A redacted tree read back (``--resume``) with each ``<env:NAME>`` filled from the
    environment again; needs ``--allow-env``, like the run that wrote it."""
    if isinstance(value, dict):
        return {k: restore(v, source) for k, v in value.items()}
    if isinstance(value, list):
        return [restore(v, source) for v in value]
    if not isinstance(value, str) or not _MARKER.search(value):
        return value

    def fill(found: re.Match[str]) -> str:
        name = found.group(1)
        if not _policy.get():
            raise ConfigError(f"{source}: holds a value the run read from the environment variable {name}; pass --allow-env (with {name} set) to use it")
        if name not in os.environ:
            raise ConfigError(f"{source}: needs the environment variable {name}, which is not set")
        _secrets[os.environ[name]] = name
        return os.environ[name]

    return _MARKER.sub(fill, value)


def literal(value: Any) -> Any:
    """A resolved tree whose strings OmegaConf will never read as interpolations."""
    if isinstance(value, dict):
        return {k: literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [literal(v) for v in value]
    if isinstance(value, str) and "${" in value:
        return value.replace("\\", "\\\\").replace("${", "\\${")
    return value
