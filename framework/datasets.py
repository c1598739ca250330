"""Building the dataset a config names: the factory its plugin registered, called with the
validated options, and the result checked (a DataModule, known polarity, a val split, no
empty split). The engine's side of the dataset contract in ``crnnfw.data``."""

from __future__ import annotations

from dataclasses import replace

from omegaconf import DictConfig

from .config import component_config
from .data import POLARITIES, SPLITS, TOO_WIDE, DataModule, held_out
from .errors import CrnnfwError, DataError, first_line
from .registry import Registry


def build_data(cfg: DictConfig, registry: Registry) -> DataModule:
    """The dataset a resolved config names, checked to be usable, with a val split."""
    component = registry.get("dataset", cfg.data.name, key="data.name")
    options = component_config(registry, cfg, "data")
    try:
        data = component.factory(options)
    except CrnnfwError:
        raise
    except Exception as exc:
        raise DataError(f"data: dataset '{cfg.data.name}' (plugin '{component.provider}') could not be built: {type(exc).__name__}: {first_line(exc)}") from exc
    if not isinstance(data, DataModule):
        raise DataError(f"data: dataset '{cfg.data.name}' (plugin '{component.provider}') returned {type(data).__name__}, not a crnnfw.DataModule")
    if data.polarity not in POLARITIES:
        raise DataError(f"data: dataset '{cfg.data.name}' declares polarity '{data.polarity}'; use one of {', '.join(POLARITIES)}")
    if data.too_wide not in TOO_WIDE:
        raise DataError(f"data: dataset '{cfg.data.name}' declares too_wide '{data.too_wide}'; use one of {', '.join(TOO_WIDE)}")
    data = _with_val(data, cfg.trainer.val_fraction, cfg.data.name)
    for split in SPLITS:
        if len(getattr(data, split)) == 0:
            raise DataError(f"data: dataset '{cfg.data.name}' has an empty {split} split; check data.root and the limits")
    return data


def _with_val(data: DataModule, fraction: float, name: str) -> DataModule:
    """``data`` itself when it has a val split; else with one held out of ``train``."""
    if data.val is not None:
        return data
    subset = getattr(data.train, "subset", None)
    if not callable(subset) or len(data.train) < 2:
        raise DataError(f"data: dataset '{name}' has no val split and its train split cannot be divided; give the DataModule a val split (the best checkpoint is chosen on it, never on test)")
    mask = held_out(len(data.train), fraction)
    return replace(data, train=subset(mask.logical_not().nonzero().squeeze(1)), val=subset(mask.nonzero().squeeze(1)))
