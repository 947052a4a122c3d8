"""Weighted sums of losses, and building them from a config's loss section."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from segkit.errors import SegkitError
from segkit.losses.cross_entropy import BCEWithLogitsLoss, CrossEntropyLoss, WeightMapCrossEntropyLoss
from segkit.losses.focal import FocalLoss
from segkit.losses.lovasz import LovaszLoss
from segkit.losses.region import DiceLoss, JaccardLoss, TverskyLoss

__all__ = ["LOSSES", "CombinedLoss", "build_loss"]

#: Loss names a config may use, and the classes they build.
LOSSES: dict[str, type[nn.Module]] = {
    "ce": CrossEntropyLoss,
    "bce": BCEWithLogitsLoss,
    "dice": DiceLoss,
    "jaccard": JaccardLoss,
    "tversky": TverskyLoss,
    "focal": FocalLoss,
    "lovasz": LovaszLoss,
    "weight_map_ce": WeightMapCrossEntropyLoss,
}


class CombinedLoss(nn.Module):
    """``sum_i weight_i * loss_i(pred, target)``.

    ``CombinedLoss([(CrossEntropyLoss(), 1.0), (DiceLoss("multiclass"), 0.5)])``. ``forward(pred,
    target, **extra)`` passes each extra keyword (e.g. ``weight_map=``) to the losses that list it in
    their ``extra_inputs``. After a forward, ``last_terms`` maps each loss's name (``names``, by
    default the config names or class names) to its unweighted value, detached, for logging.
    """

    def __init__(self, terms: Sequence[tuple[nn.Module, float]], names: Sequence[str] | None = None) -> None:
        super().__init__()
        if not terms:
            raise ValueError("CombinedLoss needs at least one (loss, weight) pair.")
        self.losses = nn.ModuleList(loss for loss, _ in terms)
        self.weights = [float(weight) for _, weight in terms]
        names = list(names) if names is not None else [type(loss).__name__ for loss, _ in terms]
        if len(names) != len(terms):
            raise ValueError(f"got {len(names)} names for {len(terms)} losses.")
        # Repeated names get a suffix so that every term keeps its own entry in last_terms.
        self.names = [name if names.count(name) == 1 else f"{name}_{i}" for i, name in enumerate(names)]
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, pred: torch.Tensor, target: torch.Tensor, **extra: Any) -> torch.Tensor:
        total: torch.Tensor | float = 0.0
        terms = {}
        for name, loss, weight in zip(self.names, self.losses, self.weights):
            accepted = {key: value for key, value in extra.items() if key in getattr(loss, "extra_inputs", ())}
            value = loss(pred, target, **accepted)
            terms[name] = value.detach()
            total = total + weight * value
        self.last_terms = terms
        return total  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return ", ".join(f"{name}: {weight:g}" for name, weight in zip(self.names, self.weights))


def build_loss(spec: str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]], key: str = "loss") -> CombinedLoss:
    """A :class:`CombinedLoss` from a config's loss section.

    ``spec`` is a loss name (``"ce"``), one entry, or a list of entries; an entry is a mapping with
    ``name`` (one of :data:`LOSSES`), an optional ``weight`` (default 1.0) and the loss's keyword
    options, e.g. ``[{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 1.0, "mode": "multiclass"}]``.
    ``key`` names the section in error messages. Raises SegkitError for an unknown name, an unknown
    or missing option, a bad weight, or an option value the loss refuses.
    """
    entries = [spec] if isinstance(spec, (str, Mapping)) else spec
    if not isinstance(entries, Sequence) or not entries:
        raise SegkitError(f"{key} must be a loss name, an entry {{name: ..., weight: ...}} or a non-empty list of them; got {spec!r}.")
    terms, names = [], []
    for i, entry in enumerate(entries):
        where = f"{key}[{i}]" if len(entries) > 1 or not isinstance(spec, (str, Mapping)) else key
        options = {"name": entry} if isinstance(entry, str) else dict(entry) if isinstance(entry, Mapping) else None
        if options is None or "name" not in options:
            raise SegkitError(f"{where} must be a loss name or a mapping with a 'name' key; got {entry!r}.")
        name = options.pop("name")
        if name not in LOSSES:
            raise SegkitError(f"{where}: unknown loss name {name!r}; use one of {', '.join(LOSSES)}.")
        weight = options.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise SegkitError(f"{where}.weight must be a non-negative number; got {weight!r}.")
        terms.append((_make(LOSSES[name], name, options, where), float(weight)))
        names.append(name)
    return CombinedLoss(terms, names)


def _make(cls: type[nn.Module], name: str, options: dict[str, Any], where: str) -> nn.Module:
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p != "self"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise SegkitError(f"{where}: loss {name!r} has no option {unknown[0]!r}; its options are {', '.join(valid)} (and weight).")
    missing = [p for p in valid if params[p].default is inspect.Parameter.empty and p not in options]
    if missing:
        hint = " (binary, multiclass or multilabel)" if missing[0] == "mode" else ""
        raise SegkitError(f"{where}: loss {name!r} needs the option {missing[0]!r}{hint}; add it to the entry.")
    try:
        return cls(**options)
    except (TypeError, ValueError) as err:
        raise SegkitError(f"{where}: loss {name!r}: {err}") from err
