"""Run configs: OmegaConf YAML validated against typed dataclasses.

The engine's own sections (``trainer``, ``model.collapse`` ...) are the dataclasses below;
each component section (``data``, ``model.backbone``, ``model.encoder``, ``model.head``) is
validated against the config dataclass its plugin registered under ``name``. Errors name the
file and the full key path, and suggest the closest valid key.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import math
import os
import re
import stat
from importlib import resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf import errors as oc_errors

from . import resolvers
from .errors import ConfigError, first_line
from .precision import PRECISIONS
from .registry import KIND_TABLE, Registry, suggest
from .rundir import check_name

#: ``trainer.compile``: off, or the ``torch.compile`` mode to train with.
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")

#: A config file is read whole; a bigger one is refused before it is read (a config is text
#: someone wrote: recipes are a few KB, a long charset list or source list some hundreds).
MAX_CONFIG_BYTES = 1 << 20

#: Where each component section lives and which kind of component it names.
COMPONENT_SECTIONS = {kind.section: kind.name for kind in KIND_TABLE if kind.section}


@dataclass
class OptimizerConfig:
    name: str = "adamw"  # adam | adamw | sgd
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw
    momentum: float = 0.9  # sgd


@dataclass
class SchedulerConfig:
    name: str = "onecycle"  # constant | cosine | onecycle | step
    warmup_epochs: float = 0.0  # linear warm-up, for constant, cosine and step
    pct_start: float = 0.25  # onecycle: fraction of training spent rising
    final_lr_ratio: float = 0.01  # cosine, onecycle: last lr = lr * final_lr_ratio
    step_epochs: int = 1  # step: decay every this many epochs
    gamma: float = 0.1  # step: decay factor


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1000
    max_steps: int = 0  # stop after this many optimizer steps in all (0: no limit)
    max_minutes: float = 0.0  # plan the run to about this many minutes of training (0: off); epochs and max_steps stay the upper bound
    val_fraction: float = 0.1  # share of train held out (seeded) as the val split, for datasets that have none
    grad_clip: float = 0.0  # max gradient norm (0: off)
    precision: str = "auto"  # auto (bf16-mixed where bf16 is native, else 16-mixed on a GPU, 32-true on a CPU) | 32-true | bf16-mixed | 16-mixed (GPU)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_threads: int = 0  # torch CPU threads (0: all cores)
    log_every: int = 100  # plain progress line every N steps when stdout is not a terminal
    compile: str = "off"  # off | default | reduce-overhead | max-autotune (false: off, true: default): torch.compile the model for training
    cudnn_benchmark: bool = False  # let cuDNN time its convolution algorithms (GPU; best when image sizes are fixed)
    data_on_device: bool = True  # GPU: hold in-memory datasets on the GPU (false: copy each batch from the host)
    init_from: Optional[str] = None  # fine-tuning: checkpoint or run directory whose matching weights start the model
    checkpoint_every: str = "off"  # also save last.ckpt within an epoch: off | N (steps) | N min; a kill then loses at most that much
    callbacks: List[Any] = field(default_factory=list)  # [{name: early_stopping, patience: 3}, ...]: code run at the loop's events
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


@dataclass
class ModelConfig:
    collapse: str = "flatten"  # how feature-map height becomes features: flatten | mean
    backbone: Any = field(default_factory=lambda: {"name": "cnn"})
    encoder: Any = field(default_factory=lambda: {"name": "lstm"})
    head: Any = field(default_factory=lambda: {"name": "softmax"})


@dataclass
class RunConfig:
    name: str = "run"  # runs go to <output_dir>/<name>/<timestamp>/
    seed: int = 0
    output_dir: str = "runs"
    data: Any = field(default_factory=lambda: {"name": "mnist"})
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def _schema_error(exc: Exception, prefix: str, source: str, fields: list[str] | None = None) -> ConfigError:
    """Turn an OmegaConf error into a one-line ConfigError with the full key path."""
    key = getattr(exc, "full_key", None) or ""
    full = ".".join(p for p in (prefix, str(key)) if p)
    if isinstance(exc, oc_errors.ConfigKeyError):
        bad = str(getattr(exc, "key", key)).split(".")[-1]
        hint = suggest(bad, fields) if fields else ""
        valid = f" (valid keys: {', '.join(fields)})" if fields else ""
        return ConfigError(f"{source}: {full}: unknown key{hint}{valid}")
    message = str(getattr(exc, "msg", exc)).splitlines()[0]
    return ConfigError(f"{source}: {full}: {message}")


def _fields_at(schema: DictConfig, key: str) -> list[str] | None:
    """Valid keys of the mapping that holds ``key`` in ``schema`` (for suggestions)."""
    node: Any = schema
    for part in str(key).split(".")[:-1]:
        if not isinstance(node, DictConfig) or part not in node:
            return None
        node = node[part]
    return [str(k) for k in node.keys()] if isinstance(node, DictConfig) else None


def _check_sections(schema: DictConfig, user: Any, prefix: str, source: str) -> None:
    """A section of the schema given a plain value (``trainer.optimizer=sgd``) gets its own message."""
    if not isinstance(user, DictConfig):
        return
    for key in user.keys():
        if key in schema and isinstance(schema[key], DictConfig) and OmegaConf.get_type(schema, str(key)) is not dict:
            path = f"{prefix}.{key}" if prefix else str(key)
            value = user._get_node(key)._value() if user._get_node(key) is not None else None
            if not isinstance(value, (DictConfig, dict)) and value is not None:
                fields = ", ".join(str(k) for k in schema[key].keys())
                raise ConfigError(f"{source}: {path}: expected a section with keys {fields}, got {value!r}")
            _check_sections(schema[key], user[key], path, source)


def _merge(schema: DictConfig, user: Any, prefix: str, source: str) -> DictConfig:
    _check_sections(schema, user, prefix, source)
    try:
        return OmegaConf.merge(schema, user)
    except oc_errors.OmegaConfBaseException as exc:
        raise _schema_error(exc, prefix, source, _fields_at(schema, getattr(exc, "full_key", "") or "")) from None


def builtin_configs() -> dict[str, Path]:
    """The recipes installed with crnnfw, by name (``mnist_crnn``, ``zoo/cnn_lstm``)."""
    root = Path(resources.files("crnnfw.configs"))
    return {str(p.relative_to(root).with_suffix("")): p for p in sorted(root.rglob("*.yaml"))}


def find_config(path: str | Path) -> Path:
    """``path`` itself when it exists (a file path always wins), else the built-in config of
    that name (``mnist_crnn`` or ``mnist_crnn.yaml``)."""
    path = Path(path)
    if os.path.lexists(path):
        return path
    name = str(path.with_suffix("")) if path.suffix in (".yaml", ".yml") else str(path)
    return builtin_configs().get(name.removeprefix("configs/"), path)  # the README's configs/... from any folder


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Read a YAML config (a file, or a built-in config's name) and apply ``key=value``
    overrides (not yet validated)."""
    path = find_config(path)
    text = read_config_text(path)
    # YAML aliases can expand a short file into millions of nodes; plain YAML has at most one
    # node per byte, so a limit of the file's size lets any real list through and stops bombs.
    try:
        user = OmegaConf.load(io.StringIO(text), max_yaml_expanded_nodes=max(10_000, len(text)))
    except (yaml.YAMLError, oc_errors.OmegaConfBaseException) as exc:
        detail = " ".join(str(exc).split())
        if "node expansion exceeds" in detail:
            detail = "its aliases expand to more nodes than the file has bytes (an alias bomb?)"
        raise ConfigError(f"{path}: not valid YAML: {detail}") from None
    if not isinstance(user, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return apply_overrides(user, overrides)


def read_config_text(path: Path) -> str:
    """A config file's text, after checking it is a regular file of a config's size: a FIFO,
    a device or a link loop is named as what it is, and never opened."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if path.is_symlink():
            raise ConfigError(f"{path}: a broken symbolic link") from None
        raise ConfigError(f"{path}: no such config file (built-in configs: {', '.join(builtin_configs())})") from None
    except OSError as exc:
        kind = "a symbolic link loop" if exc.errno == errno.ELOOP else f"cannot read it ({exc.strerror or exc})"
        raise ConfigError(f"{path}: {kind}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{path}: a folder, not a config file; give a .yaml file")
    if not stat.S_ISREG(info.st_mode):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(info.st_mode) else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "not a regular file"
        raise ConfigError(f"{path}: {kind}, not a config file; give a .yaml file")
    if info.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {info.st_size / 2**20:.1f} MiB is too big for a config (at most {MAX_CONFIG_BYTES >> 20} MiB); keep data in files the config names")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid YAML: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def apply_overrides(user: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Apply ``key=value`` overrides to a loaded config (a file's, or a checkpoint's)."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}': expected key=value, e.g. trainer.epochs=3")
    try:
        dotlist = OmegaConf.from_dotlist(list(overrides))
    except oc_errors.OmegaConfBaseException as exc:
        raise ConfigError(f"overrides {' '.join(overrides)}: {first_line(exc)}") from None
    for section in COMPONENT_SECTIONS:
        # Swapping a component (model.backbone.name=resnet) drops the options the file gave the
        # old one: they belong to it. Options given as overrides still apply to the new one.
        new_name = OmegaConf.select(dotlist, f"{section}.name", default=None)
        if new_name is not None and new_name != OmegaConf.select(user, f"{section}.name", default=None):
            OmegaConf.update(user, section, {"name": new_name}, merge=False)
    return OmegaConf.merge(user, dotlist)


def _check_choice(value: str, choices: tuple[str, ...], key: str, source: str) -> None:
    if value not in choices:
        raise ConfigError(f"{source}: {key}: '{value}' is not one of {', '.join(choices)}{suggest(str(value), choices)}")


def _check_positive(value: float, key: str, source: str, allow_zero: bool = False) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{source}: {key}: must be a finite number, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{source}: {key}: must be {bound}, got {value}")


def component_config(registry: Registry, cfg: DictConfig, section: str, source: str = "config") -> Any:
    """The typed config (a dataclass instance) of one component section, validated."""
    return _typed(registry, COMPONENT_SECTIONS[section], OmegaConf.select(cfg, section), section, source)


def callback_configs(cfg: DictConfig, registry: Registry, source: str = "config") -> list[tuple[str, Any]]:
    """``trainer.callbacks`` as (name, typed config) pairs, each validated like a component."""
    callbacks = cfg.trainer.get("callbacks", [])
    if not isinstance(callbacks, (ListConfig, list)):
        raise ConfigError(f"{source}: trainer.callbacks: expected a list of sections such as [{{name: early_stopping, patience: 3}}]")
    typed = []
    for index, node in enumerate(callbacks):
        key = f"trainer.callbacks[{index}]"
        typed.append((node.get("name") if isinstance(node, DictConfig) else None, _typed(registry, "callback", node, key, source)))
    return typed


def _typed(registry: Registry, kind: str, node: Any, section: str, source: str) -> Any:
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{source}: {section}: expected a mapping with a 'name' key")
    name = node.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"{source}: {section}.name: a {kind} name is required (available: {', '.join(registry.names(kind))})")
    component = registry.get(kind, name, key=f"{source}: {section}.name")
    options = OmegaConf.create({k: v for k, v in node.items_ex(resolve=False) if k != "name"})
    try:
        schema = OmegaConf.structured(component.config)
    except oc_errors.OmegaConfBaseException as exc:
        raise ConfigError(f"{kind} '{name}' from plugin '{component.provider}' has a config class OmegaConf cannot use: {first_line(exc)}") from None
    typed = _merge(schema, options, section, source)
    try:
        return OmegaConf.to_object(typed)  # runs the dataclass's __post_init__ checks
    except oc_errors.MissingMandatoryValue as exc:
        raise ConfigError(f"{source}: {section}.{exc.full_key}: required, and the config does not set it") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: {section}: {exc}") from None


def resolve(cfg: DictConfig, registry: Registry, source: str = "config", allow_env: bool = False) -> DictConfig:
    """Validate a loaded config, resolve its interpolations once and fill in every default; the
    result is what a run uses, and holds no interpolation any more.

    ``source`` (the file name) prefixes every error message. ``allow_env`` admits the
    environment and decode resolvers (see ``crnnfw.resolvers``).
    """
    with resolvers.policy(allow_env):
        return _resolve(cfg, registry, source)


def _interpolation_problem(exc: Exception) -> str:
    """The reason inside OmegaConf's wrapping of a resolver's error."""
    return re.sub(r"^\w+ raised while resolving interpolation: ", "", first_line(exc))


def _resolve(cfg: DictConfig, registry: Registry, source: str) -> DictConfig:
    resolved = _merge(OmegaConf.structured(RunConfig), cfg, "", source)
    out = plain(resolved, source)
    for key in ("name", "output_dir"):
        if resolvers.redact(out[key]) != out[key]:
            raise ConfigError(f"{source}: {key}: may not come from the environment (it names the run directory, which every log and file shows)")
    check_name(str(out["name"]), f"{source}: name")
    if not isinstance(out["seed"], int) or not 0 <= out["seed"] < 2**64:
        raise ConfigError(f"{source}: seed: must be a whole number from 0 to 2**64 - 1, got {out['seed']}")
    resolved = OmegaConf.create(resolvers.literal(out))
    for section in COMPONENT_SECTIONS:
        typed = component_config(registry, resolved, section, source)
        parent, _, leaf = section.rpartition(".")
        target = out[parent] if parent else out
        target[leaf] = {"name": OmegaConf.select(resolved, section).name, **dataclasses.asdict(typed)}
    out["trainer"]["callbacks"] = [{"name": name, **dataclasses.asdict(typed)} for name, typed in callback_configs(resolved, registry, source)]
    t = resolved.trainer
    _check_choice(t.precision, PRECISIONS, "trainer.precision", source)
    _check_choice(t.optimizer.name, ("adam", "adamw", "sgd"), "trainer.optimizer.name", source)
    _check_choice(t.scheduler.name, ("constant", "cosine", "onecycle", "step"), "trainer.scheduler.name", source)
    # YAML reads a bare off/false as a boolean, which the str field holds as 'False'.
    out["trainer"]["compile"] = {"False": "off", "True": "default"}.get(t.compile, t.compile)
    _check_choice(out["trainer"]["compile"], COMPILE_MODES, "trainer.compile", source)
    _check_choice(resolved.model.collapse, ("flatten", "mean"), "model.collapse", source)
    for key in ("epochs", "batch_size", "eval_batch_size", "log_every"):
        _check_positive(t[key], f"trainer.{key}", source)
    _check_positive(t.optimizer.lr, "trainer.optimizer.lr", source)
    for key in ("max_steps", "max_minutes", "grad_clip", "num_threads"):
        _check_positive(t[key], f"trainer.{key}", source, allow_zero=True)
    try:
        checkpoint_interval(t.checkpoint_every, distributed_run=False)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if not 0 < t.val_fraction < 1:
        raise ConfigError(f"{source}: trainer.val_fraction: must be between 0 and 1 (exclusive), got {t.val_fraction}")
    if t.device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", t.device):
        raise ConfigError(f"{source}: trainer.device: '{t.device}' is not one of auto, cpu, cuda, cuda:N{suggest(t.device, ('auto', 'cpu', 'cuda'))}")
    return OmegaConf.create(resolvers.literal(out))


def checkpoint_interval(every: str, distributed_run: bool) -> tuple[int, float]:
    """``trainer.checkpoint_every`` as (steps, seconds): ``off``, ``500`` or ``500 steps``, ``10 min``."""
    text = str(every).strip().lower()
    if text in ("off", "0", "none", "false"):
        return 0, 0.0
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(steps?|m|min|minutes?)?", text)
    if not found or float(found.group(1)) <= 0:
        raise ConfigError(f"trainer.checkpoint_every: '{every}' is not off, a number of steps (500) or minutes (10 min)")
    if found.group(2) in (None, "step", "steps"):
        if not found.group(1).isdigit():
            raise ConfigError(f"trainer.checkpoint_every: '{every}': steps are a whole number")
        return int(found.group(1)), 0.0
    if distributed_run:
        raise ConfigError(f"trainer.checkpoint_every: '{every}': under torchrun give steps, which every process counts alike")
    return 0, float(found.group(1)) * 60


def to_yaml(cfg: DictConfig) -> str:
    """The config as YAML text, as saved in run directories and printed by ``crnnfw config``:
    secrets redacted, and written so that reading it back interpolates nothing."""
    return OmegaConf.to_yaml(OmegaConf.create(resolvers.literal(as_container(cfg))))


def as_container(cfg: DictConfig | ListConfig) -> Any:
    """Plain dicts and lists, secrets redacted (for checkpoints and JSON)."""
    return resolvers.redact(OmegaConf.to_container(cfg, resolve=True))


def plain(cfg: DictConfig, source: str) -> Any:
    """A loaded config's values as plain dicts and lists, its interpolations resolved (under the
    resolver policy in force), with a one-line error for a broken one."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except (oc_errors.OmegaConfBaseException, RecursionError) as exc:
        key = getattr(exc, "full_key", None) or "config"
        detail = _interpolation_problem(exc) if isinstance(exc, oc_errors.InterpolationResolutionError) else first_line(exc, "an interpolation refers to itself")
        raise ConfigError(f"{source}: {key}: {detail}") from None


def from_container(container: Any) -> DictConfig:
    """A config stored by crnnfw (a checkpoint's, a run's), taken literally: never interpolated."""
    return OmegaConf.create(resolvers.literal(container))
