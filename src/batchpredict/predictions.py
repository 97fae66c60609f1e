"""Prediction columns: how the model's outputs become an output's columns.

Prediction arrays become Arrow columns here, split into `name_0..name_{n-1}` for formats
without list columns (CSV, TSV); `--class_names` add a label column (and a score), and the
input's kept columns go first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from batchpredict.config import RunConfig
from batchpredict.errors import (
    BatchPredictError,
    DataError,
    ModelError,
    UsageError,
)
from batchpredict.tensors import ModelTensors, TensorInfo


@dataclass(frozen=True)
class _Role:
    """What an output column holds, and the option that renames it (None: no option does)."""

    what: str
    option: str | None


@dataclass(frozen=True)
class PredictionColumns:
    """How model outputs become output columns, and the optional label and score columns."""

    #: Output tensor name -> column name, in the model's output order.
    names: dict[str, str]
    class_names: tuple[str, ...] | None = None
    #: Cut-off for a sigmoid output of width 1; set (0.5 by default) whenever labels are
    #: made from a width-1 output.
    threshold: float | None = None
    #: The output the label and score are made from; None: no labels.
    label_output: str | None = None
    label_column: str = "label"
    score_column: str = "score"

    @property
    def labelled(self) -> bool:
        return self.label_output is not None

    @classmethod
    def from_config(cls, model: ModelTensors, config: RunConfig) -> PredictionColumns:
        """The columns a `predict` run writes for `model`."""
        return cls.for_model(
            model,
            config.prediction_column,
            config.class_names,
            config.threshold,
            label_output=config.label_output,
            label_column=config.label_column,
            score_column=config.score_column,
        )

    @classmethod
    def for_model(
        cls,
        model: ModelTensors,
        prediction_column: str = "prediction",
        class_names: tuple[str, ...] | None = None,
        threshold: float | None = None,
        *,
        label_output: str | None = None,
        label_column: str = "label",
        score_column: str = "score",
    ) -> PredictionColumns:
        """Name the columns (`prediction`, or the output names) and check the label options.

        Labels are made from `label_output`, else from the only output, else from the one
        output whose width fits (see `_fitting_output`).
        """
        if len(model.outputs) == 1:
            names = {model.outputs[0].name: prediction_column}
        else:  # dict keys, Keras output layer names or signature keys (`inspect` shows them)
            names = {t.name: t.name for t in model.outputs}
        labelled: str | None = None
        if class_names is not None or threshold is not None:
            chosen = _label_output(model.outputs, class_names, threshold, label_output)
            labelled = chosen.name
            if _width(chosen.shape) == 1:
                threshold = 0.5 if threshold is None else threshold
        columns = cls(names, class_names, threshold, labelled, label_column, score_column)
        columns._refuse_own_clashes()
        return columns

    @property
    def column_names(self) -> tuple[str, ...]:
        """The prediction columns as named before any split into `name_i` for CSV and TSV."""
        labels = (self.label_column, self.score_column) if self.labelled else ()
        return (*self.names.values(), *labels)

    def role(self, column: str) -> _Role | None:
        """What the output column `column` holds (None: not a prediction column)."""
        if self.labelled and column == self.label_column:
            return _Role("the label", "--label_column")
        if self.labelled and column == self.score_column:
            return _Role("the score", "--score_column")
        single = len(self.names) == 1
        for tensor, name in self.names.items():
            # `name_0`, `name_1`, ...: an output split for CSV and TSV.
            if column == name or re.fullmatch(re.escape(name) + r"_\d+", column):
                if single:
                    return _Role("the prediction", "--prediction_column")
                return _Role(f"model output {tensor!r}", None)
        return None

    def _refuse_own_clashes(self) -> None:
        """Refuse a label or score column named like another prediction column."""
        if not self.labelled:
            return  # output names are unique
        if self.label_column == self.score_column:
            raise UsageError(
                f"--label_column and --score_column are both {self.label_column!r}; give them "
                "different names"
            )
        for column, what, option in (
            (self.label_column, "the label", "--label_column"),
            (self.score_column, "the score", "--score_column"),
        ):
            tensor = next((t for t, c in self.names.items() if c == column), None)
            if tensor is None:
                continue
            single = len(self.names) == 1
            other = "the prediction" if single else f"model output {tensor!r}"
            raise UsageError(
                f"output column {column!r} would hold both {what} and {other}; rename {what} "
                f"with {option}" + (" or the prediction with --prediction_column" if single else "")
            )

    def refuse_kept(self, kept: Sequence[str], where: str, error: type[BatchPredictError]) -> None:
        """Refuse kept input columns named like a prediction column, naming the way out."""
        for column in kept:
            role = self.role(column)
            if role is not None:
                rename = f"rename {role.what} with {role.option} or " if role.option else ""
                raise error(
                    f"{where}: output column {column!r} would appear twice, as a kept input "
                    f"column and as {role.what}; {rename}leave the input column out with "
                    "--keep_columns"
                )

    def build(self, predictions: dict[str, np.ndarray], nested: bool) -> list[tuple[str, pa.Array]]:
        """Arrow columns: scalars for width 1, lists (or `name_i` when not `nested`) otherwise."""
        columns: list[tuple[str, pa.Array]] = []
        for tensor_name, column in self.names.items():
            values = predictions[tensor_name]
            rows = len(values)
            per_row = int(np.prod(values.shape[1:])) if values.ndim > 1 else 1
            if per_row == 1:
                columns.append((column, _scalar_array(values.reshape(rows))))
            elif nested:
                columns.append((column, _nested_list_array(values)))
            else:
                flat = values.reshape(rows, per_row)
                columns.extend(
                    (f"{column}_{i}", _scalar_array(np.ascontiguousarray(flat[:, i])))
                    for i in range(per_row)
                )
        if self.label_output is not None:
            columns.extend(self._labels(predictions[self.label_output]))
        return columns

    def _labels(self, values: np.ndarray) -> list[tuple[str, pa.Array]]:
        """The label (argmax, or the threshold for one sigmoid) and its probability."""
        flat = values.reshape(len(values), -1)
        width = flat.shape[1]
        names = len(self.class_names) if self.class_names is not None else None
        # Checked here too for outputs whose width the model leaves open.
        if width == 1:
            if names not in (None, 2):
                raise DataError(
                    f"output {self.label_output!r} has width 1 (a sigmoid), so --class_names "
                    f"needs 2 names (negative, positive), got {names}"
                )
            threshold = 0.5 if self.threshold is None else self.threshold
            probability = flat[:, 0]
            index = (probability >= threshold).astype(np.int64)
            score = np.where(index == 1, probability, 1 - probability)
        else:
            if self.threshold is not None:
                raise DataError(
                    f"--threshold is for an output of width 1; output {self.label_output!r} "
                    f"has width {width}"
                )
            if names is not None and width != names:
                raise DataError(
                    f"output {self.label_output!r} has width {width} but --class_names has "
                    f"{names} names"
                )
            index = np.argmax(flat, axis=1)
            score = flat[np.arange(len(flat)), index]
        label = (
            pa.array(self.class_names).take(pa.array(index))
            if self.class_names is not None
            else pa.array(index)
        )
        return [(self.label_column, label), (self.score_column, pa.array(score))]


def _label_output(
    outputs: Sequence[TensorInfo],
    class_names: tuple[str, ...] | None,
    threshold: float | None,
    wanted: str | None,
) -> TensorInfo:
    """The output to label: `--label_output`, the only one, or the only one that fits."""
    if threshold is not None and class_names is not None and len(class_names) != 2:
        raise UsageError(
            "--threshold labels a sigmoid output with 2 class names (negative, positive); "
            f"--class_names has {len(class_names)}"
        )
    if wanted is not None:
        chosen = next((t for t in outputs if t.name == wanted), None)
        if chosen is None:
            raise ModelError(
                f"--label_output {wanted!r}: the model has no such output; its outputs: "
                f"{_listing(outputs)}"
            )
    elif len(outputs) == 1:
        chosen = outputs[0]
    else:
        chosen = _fitting_output(outputs, class_names, threshold)
    if _fits(chosen, class_names, threshold) is False:
        raise ModelError(
            f"{_needs(class_names, threshold)}; output {chosen.name!r} has {_width_text(chosen)}"
        )
    return chosen


def _fitting_output(
    outputs: Sequence[TensorInfo], class_names: tuple[str, ...] | None, threshold: float | None
) -> TensorInfo:
    """The one output of several that can be labelled; a ModelError listing the candidates
    when none or several can (an output of unknown width might, so it counts)."""
    fitting = [t for t in outputs if _fits(t, class_names, threshold) is not False]
    if len(fitting) == 1 and _fits(fitting[0], class_names, threshold):
        return fitting[0]
    if not fitting:
        raise ModelError(
            f"{_needs(class_names, threshold)}, and no output of this model has it; its "
            f"outputs: {_listing(outputs)}"
        )
    which = (
        "more than one output of this model could be it"
        if len(fitting) > 1
        else "the model does not say whether this output is it"
    )
    raise ModelError(
        f"{_needs(class_names, threshold)}, and {which}: {_listing(fitting)}; choose the "
        "output with --label_output"
    )


def _fits(
    output: TensorInfo, class_names: tuple[str, ...] | None, threshold: float | None
) -> bool | None:
    """Whether labels can be made from `output` (None: its width is not known)."""
    if output.dtype == "string":
        return False
    width = _width(output.shape)
    if width is None:
        return None
    if threshold is not None:
        return width == 1  # with 2 class names or none (RunConfig refuses others)
    assert class_names is not None
    # Two names also fit one sigmoid probability: negative below the threshold, positive above.
    return width == len(class_names) or (width == 1 and len(class_names) == 2)


def _needs(class_names: tuple[str, ...] | None, threshold: float | None) -> str:
    """What the label options ask of an output, as the start of an error message."""
    if threshold is not None:
        return "--threshold labels a sigmoid output of width 1"
    assert class_names is not None
    count = len(class_names)
    if count == 2:
        return "2 --class_names label an output of width 2 or a sigmoid output of width 1"
    return f"{count} --class_names label an output of width {count}"


def _listing(outputs: Sequence[TensorInfo]) -> str:
    return ", ".join(f"{t.name} ({_width_text(t)})" for t in outputs)


def _width_text(output: TensorInfo) -> str:
    if output.dtype == "string":
        return "strings"
    width = _width(output.shape)
    return "width unknown" if width is None else f"width {width}"


def _width(shape: tuple[int | None, ...]) -> int | None:
    """Values per row of an output shape (None when a dimension is open)."""
    known = [d for d in shape[1:] if d is not None]
    return math.prod(known) if len(known) == len(shape) - 1 else None


def _scalar_array(values: np.ndarray) -> pa.Array:
    if values.dtype == object:  # tf.string outputs arrive as bytes
        return pa.array(
            [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]
        )
    return pa.array(values)


def _nested_list_array(values: np.ndarray) -> pa.Array:
    """A `[rows, a, b, ...]` array as nested Arrow lists (no per-row Python)."""
    array: pa.Array = _scalar_array(values.reshape(-1))
    for width in reversed(values.shape[1:]):
        count = len(array) // width
        offsets = pa.array(np.arange(0, count * width + 1, width, dtype=np.int32))
        array = pa.ListArray.from_arrays(offsets, array)
    return array


def output_batch(
    kept: pa.Table,
    predictions: list[tuple[str, pa.Array]],
    nested: bool,
    source: str,
    columns: PredictionColumns | None = None,
) -> pa.RecordBatch:
    """Kept columns followed by prediction columns as one record batch.

    A kept column named like a prediction column is refused, naming the option that
    renames the prediction column (`columns` knows which).
    """
    names = [*kept.column_names, *(name for name, _ in predictions)]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        kept_clash = [n for n in clash if n in kept.column_names]
        if columns is not None:
            columns.refuse_kept(kept_clash, source, DataError)
        hint = "; leave the input column out with --keep_columns" if kept_clash else ""
        raise DataError(f"{source}: output column(s) {', '.join(clash)} would appear twice{hint}")
    if not nested:
        for field in kept.schema:
            if pa.types.is_nested(field.type):
                raise DataError(
                    f"{source}: kept column {field.name!r} is a {field.type} and this output "
                    "format cannot hold lists; leave it out with --keep_columns or choose "
                    "--output_format parquet, jsonl or avro"
                )
    arrays = [c.combine_chunks() for c in kept.columns] + [a for _, a in predictions]
    return pa.RecordBatch.from_arrays(arrays, names=names)
