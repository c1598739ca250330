"""The whole plugin contract of crnnfw: every hook a plugin may implement.

A plugin is any importable object (usually a module) exposed through the ``crnnfw``
entry-point group of its distribution::

    [project.entry-points.crnnfw]
    my_backbones = "my_package.plugin"

Inside it, implement one or more of the hooks below, decorated with ``crnnfw.hookimpl``.
Each hook receives a ``register`` callable; call it once per component::

    @crnnfw.hookimpl
    def crnnfw_register_backbones(register):
        register("resnet", build_resnet, config=ResNetConfig, description="...")

``register(name, factory, *, config, description="")`` takes:

- ``name``: the name configs use (``model.backbone.name: resnet``); unique among all
  plugins' components of that kind.
- ``factory``: a callable building the component (its signature is given per hook below).
- ``config``: a ``@dataclass`` whose fields, with defaults, are the component's options. The
  config system validates user values against it (unknown keys, wrong types), then builds an
  instance, so checks in its ``__post_init__`` (raise ValueError) are reported with the
  section's key path; the factory receives that instance.
- ``description``: one line shown by ``crnnfw plugins``.

Hooks are called once per process, when the registry is first needed. A plugin that raises
while importing or registering is reported, not fatal (unless ``CRNNFW_STRICT_PLUGINS=1``).
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT = "crnnfw"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., None]


@hookspec
def crnnfw_register_backbones(register: Register) -> None:
    """Register image backbones (``model.backbone.name``).

    Factory signature: ``factory(config, *, in_channels: int, in_height: int) -> Backbone``.
    The returned module subclasses :class:`crnnfw.Backbone`: it declares ``out_channels``,
    ``out_height(in_height)`` and ``out_lengths(widths)``, and its ``forward(images, widths)``
    returns ``(features (N, out_channels, H', W'), lengths (N,))``.
    """


@hookspec
def crnnfw_register_encoders(register: Register) -> None:
    """Register sequence encoders (``model.encoder.name``).

    Factory signature: ``factory(config, *, in_features: int) -> SequenceEncoder``.
    The returned module subclasses :class:`crnnfw.SequenceEncoder`: it declares
    ``out_features`` and its ``forward(seq (N, T, D), lengths (N,))`` returns
    ``(N, T, out_features)``; steps at or past a sample's length must not change the result
    of the steps before it.
    """


@hookspec
def crnnfw_register_heads(register: Register) -> None:
    """Register task heads (``model.head.name``).

    Factory signature: ``factory(config, *, in_features: int, classes: tuple[str, ...]) -> Head``.
    ``classes`` is the dataset's vocabulary (digit names, or a charset's characters). The
    returned module subclasses :class:`crnnfw.Head` and owns its task: ``forward``, ``loss``,
    ``decode`` and ``metrics``.
    """


@hookspec
def crnnfw_register_datasets(register: Register) -> None:
    """Register datasets (``data.name``).

    Factory signature: ``factory(config) -> DataModule``: a :class:`crnnfw.DataModule` holding
    ``train``, ``val`` and ``test`` splits that yield :class:`crnnfw.Batch` objects (without a
    ``val`` the engine holds one out of a ``train`` that can be subset, such as a
    :class:`crnnfw.TensorSplit` or :class:`crnnfw.PackedSplit`; the best
    checkpoint is chosen on ``val``, ``test`` is only reported), the vocabulary ``classes``,
    the image ``channels`` and ``height``, the range of widths (``min_width``, ``max_width``)
    and, for sequence labels composed on the fly, ``narrowest``: for each label length, the
    narrowest image it comes in. In-memory splits (:class:`crnnfw.TensorSplit`,
    :class:`crnnfw.PackedSplit`) are checked sample by sample: every label must fit the steps
    the model leaves at its image's width. A factory that finds problems in its data raises
    :class:`crnnfw.DataProblems` with all of them, each with its place.
    """


@hookspec
def crnnfw_register_callbacks(register: Register) -> None:
    """Register trainer callbacks (``trainer.callbacks: [{name: ..., option: ...}]``).

    Factory signature: ``factory(config) -> Callback``: a :class:`crnnfw.Callback` whose
    ``on_*`` methods run at the training loop's events (see ``crnnfw.callbacks``).
    """
