"""What a model takes and gives, without TensorFlow: named tensors with dtypes and shapes.

Column mapping (`columns`), output columns (`outputs`) and the manifest describe a model
through these; only `model` and `predictor` load TensorFlow to fill them in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output: its name, dtype and shape (first dimension = batch)."""

    name: str
    #: NumPy dtype name ("float32", "int64", ...) or "string" for tf.string tensors.
    dtype: str
    #: Full shape including the batch dimension; None where the model leaves it open.
    shape: tuple[int | None, ...]
    #: False when the model does not fix even the number of dimensions (shape is then ()).
    rank_known: bool = True


@dataclass(frozen=True)
class ResolvedModelPath:
    """Where a model lives on disk after version resolution, and what kind it is."""

    path: str
    #: "keras", "h5" or "saved_model".
    kind: str
    #: The TensorFlow-Serving version number when a base directory was given, else None.
    version: int | None


class ModelTensors(Protocol):
    """A model as its inputs and outputs describe it (a loaded model is one)."""

    @property
    def inputs(self) -> tuple[TensorInfo, ...]: ...

    @property
    def outputs(self) -> tuple[TensorInfo, ...]: ...


def shape_text(shape: tuple[int | None, ...]) -> str:
    """A tensor shape as messages show it: `[None, 8, 8, 1]`."""
    return "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"
