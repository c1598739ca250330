"""Which run to resume, and the config it continues with."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from . import config as config_mod
from . import resolvers, rundir
from .errors import ConfigError
from .plugins import get_host

#: Options a resumed run may change: they do not alter what an uninterrupted run computes
#: (speed options such as ``compile`` may change the last bits of floating-point results),
#: except ``epochs`` (train on), ``max_steps`` and ``max_minutes``; ``name`` and ``output_dir`` locate ``--resume last``.
RESUMABLE = (
    "trainer.epochs",
    "trainer.max_steps",
    "trainer.max_minutes",
    "trainer.log_every",
    "trainer.num_threads",
    "trainer.device",
    "trainer.eval_batch_size",
    "trainer.compile",
    "trainer.checkpoint_every",
    "trainer.cudnn_benchmark",
    "trainer.data_on_device",
    "name",
    "output_dir",
)


def find_run(target: str, config_path: str | None, overrides: Sequence[str]) -> Path:
    """The run directory ``--resume`` names: a path, or ``last`` (the newest run of the config's name)."""
    if target != "last":
        run_dir = Path(target)
        if not rundir.checkpoint_file(run_dir).is_file():
            raise ConfigError(f"--resume: {run_dir} is not a run directory with checkpoints/last.ckpt (a run is resumable after its first epoch)")
        return run_dir
    if config_path is None:
        raise ConfigError("--resume last: give the config too (crnnfw run CONFIG --resume last) so the run's name and output_dir are known")
    cfg = config_mod.load(config_path, [o for o in overrides if o.split("=")[0] in ("name", "output_dir")])
    with resolvers.policy(False):
        parent = Path(str(cfg.get("output_dir", "runs"))) / str(cfg.get("name", "run"))
    run_dir = rundir.latest_run(parent)
    if run_dir is None:
        raise ConfigError(f"--resume last: no run with a checkpoint under {parent}")
    return run_dir


def resumed_config(run_dir: Path, overrides: Sequence[str], allow_env: bool = False) -> DictConfig:
    """The run's own saved config, with only the overrides that keep it the same run."""
    changed = [o for o in overrides if o.split("=", 1)[0] not in RESUMABLE]
    if changed:
        raise ConfigError(f"--resume: {', '.join(changed)} would make it a different run; a resumed run may change only {', '.join(RESUMABLE)} (start a new run, or fine-tune with --init-from)")
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"--resume: {run_dir} has no config.yaml (every run writes one when it starts); it cannot be resumed")
    # config.yaml holds no interpolation of its own (to_yaml escapes them): only the run's
    # redacted secrets come back, from the environment, where --allow-env says so.
    with resolvers.policy(allow_env):
        stored = config_mod.from_container(resolvers.restore(config_mod.plain(config_mod.load(saved), str(saved)), str(saved)))
    return config_mod.resolve(config_mod.apply_overrides(stored, overrides), get_host().registry, source=str(saved), allow_env=allow_env)
