"""Map input columns onto the model's inputs (converting them is `conversion.py`).

The mapping is planned once per run (`plan_mapping`, from the first input) and applied to
every file by column name (`RunMapping.for_file`). *Named*: every model input reads the
column of the same name (scalars, or list columns for inputs of shape `[None, T]` /
`[None, T, d]`). *Stacked*: a model with one input reads several scalar columns side by
side — the ones named by `--features` (reshaped row-major when the input has more
dimensions), or else, for a `[None, k]` input, the first input's candidate columns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from batchpredict.errors import DataError
from batchpredict.tensors import TensorInfo, shape_text


@dataclass(frozen=True)
class InputBinding:
    """One model input and the column(s) that feed it."""

    tensor: TensorInfo
    columns: tuple[str, ...]
    #: True when several scalar columns are stacked into one `[None, k]` input.
    stacked: bool


@dataclass(frozen=True)
class ColumnMapping:
    """How one file's columns feed the model, and which of its columns go to the output."""

    bindings: tuple[InputBinding, ...]
    kept: tuple[str, ...]

    @property
    def read_columns(self) -> tuple[str, ...]:
        """Every column the model reads, in binding order."""
        return tuple(c for b in self.bindings for c in b.columns)


@dataclass(frozen=True)
class RunMapping:
    """Which columns feed which model input: decided once per run, applied by name.

    Every input file must supply the columns by name, wherever they sit in the file, so a
    file with its columns in another order gets the same predictions, and a column that is
    missing or unreadable is an error: another column never stands in for it.
    """

    bindings: tuple[InputBinding, ...]
    #: `--keep_columns`; None keeps every column of a file that the model does not read.
    keep_columns: tuple[str, ...] | None
    #: How the columns were chosen, for logs and errors: "input names", "--features", or
    #: "the columns of FILE" (the default rule for an input the model does not name).
    decided_by: str

    @property
    def read_columns(self) -> tuple[str, ...]:
        """Every column the model reads, in binding order."""
        return tuple(c for b in self.bindings for c in b.columns)

    @property
    def guessed_order(self) -> bool:
        """Whether the column order came from the first input rather than from the user."""
        return self.decided_by.startswith("the columns of ")

    def for_file(self, schema: pa.Schema, source: str) -> ColumnMapping:
        """This mapping for one file: its columns by name; DataError naming any missing."""
        available = list(schema.names)
        _require(self.keep_columns or (), available, source, "--keep_columns")
        missing = [c for c in self.read_columns if c not in available]
        if missing:
            raise DataError(
                f"{source}: missing column(s) {', '.join(missing)} that the model reads "
                f"(column mapping from {self.decided_by}); available columns: "
                f"{', '.join(available)}"
            )
        read = set(self.read_columns)
        if self.keep_columns is None:
            kept = tuple(c for c in available if c not in read)
        else:
            kept = self.keep_columns
        return ColumnMapping(self.bindings, kept)

    def read_types(self, schema: pa.Schema, source: str) -> dict[str, pa.DataType]:
        """The Arrow type a text reader must parse each numeric column into (see
        `ReadOptions.column_types`), after checking that `schema` supplies the mapping."""
        self.for_file(schema, source)
        types: dict[str, pa.DataType] = {}
        for binding in self.bindings:
            tensor = binding.tensor
            scalar = binding.stacked or (
                tensor.rank_known and all(d == 1 for d in tensor.shape[1:])
            )
            kind = _ARROW_NUMBER.get(_dtype_family(binding.tensor.dtype))
            for name in binding.columns:
                if scalar and kind is not None and not _is_nested(schema.field(name).type):
                    types[name] = kind
        return types

    def as_dict(self) -> dict[str, Any]:
        """The mapping as JSON-ready values, for `run started`, the summary and the manifest."""
        return {
            "decided_by": self.decided_by,
            "inputs": [
                {
                    "input": b.tensor.name,
                    "dtype": b.tensor.dtype,
                    "shape": list(b.tensor.shape),
                    "columns": list(b.columns),
                }
                for b in self.bindings
            ],
            "keep_columns": None if self.keep_columns is None else list(self.keep_columns),
        }

    def describe(self) -> list[str]:
        """Lines for `inspect`: which columns feed which input, and how that was decided."""
        lines = [f"column mapping (from {self.decided_by}):"]
        for b in self.bindings:
            shape = "x".join("?" if d is None else str(d) for d in b.tensor.shape)
            if not b.stacked:
                how = "column"
            elif len(b.tensor.shape) > 2:
                how = (
                    f"{len(b.columns)} columns, reshaped row-major to {shape_text(b.tensor.shape)}"
                )
            else:
                how = f"{len(b.columns)} columns stacked"
            lines.append(
                f"  {b.tensor.name} ({b.tensor.dtype}[{shape}]) <- {how}: {', '.join(b.columns)}"
            )
        if self.guessed_order:
            features = ",".join(self.read_columns)
            lines.append(f"  pin this order for every run with: --features {features}")
        return lines


#: The Arrow type a text column is parsed into for a model input of each dtype family.
_ARROW_NUMBER = {"float": pa.float64(), "int": pa.int64(), "bool": pa.bool_()}


def _dtype_family(dtype: str) -> str:
    if dtype.startswith("float") or dtype == "bfloat16":
        return "float"
    if dtype.startswith(("int", "uint")):
        return "int"
    return dtype


def plan_mapping(
    inputs: Sequence[TensorInfo],
    schema: pa.Schema,
    source: str,
    features: Sequence[str] | None = None,
    keep_columns: Sequence[str] | None = None,
    declared_types: bool = True,
) -> RunMapping:
    """Decide which columns feed which input, from the first input's `schema`.

    Inputs the model names read the columns of those names. A single input fed from several
    columns reads `features` in that order (any input whose size is that number of values,
    reshaped row-major), or else, for a `[None, k]` input, the first input's candidate
    columns in its order: every column not in `keep_columns` that may hold numbers. With
    `declared_types` (Parquet, Avro, Arrow tables) that is every numeric column; in text
    formats (CSV, JSON), whose types are only guessed from the first rows, every column that
    is not a list or object, so that a numeric column made text by a few bad values is
    parsed (and its bad values rejected) rather than replaced by another column.
    """
    available = list(schema.names)
    keep = tuple(keep_columns) if keep_columns is not None else None
    _require(keep or (), available, source, "--keep_columns")
    if features is None and all(t.name in available for t in inputs):
        bindings = tuple(InputBinding(t, (t.name,), stacked=False) for t in inputs)
        return RunMapping(bindings, keep, "input names")
    if features is not None and len(inputs) == 1:
        tensor = inputs[0]
        _require(features, available, source, "--features")
        _check_feature_count(tensor, tuple(features), source)
        return RunMapping((InputBinding(tensor, tuple(features), True),), keep, "--features")
    if features is None and len(inputs) == 1 and _is_vector(inputs[0]):
        candidates = tuple(
            f.name
            for f in schema
            if f.name not in (keep or ()) and _may_feed_number(f.type, declared_types)
        )
        _check_default_count(inputs[0], candidates, source, declared_types)
        binding = InputBinding(inputs[0], candidates, stacked=True)
        return RunMapping((binding,), keep, f"the columns of {source}")
    if features is not None:
        raise DataError(
            f"{source}: --features needs a model with one input; this model has inputs "
            f"{', '.join(t.name for t in inputs)}, each read from the column of its name"
        )
    missing = [t.name for t in inputs if t.name not in available]
    raise DataError(
        f"{source}: missing column(s) for model input(s): {', '.join(missing)}; "
        f"available columns: {', '.join(available)}"
    )


def _is_vector(tensor: TensorInfo) -> bool:
    return len(tensor.shape) == 2 and tensor.shape[1] is not None


def _may_feed_number(arrow_type: pa.DataType, declared_types: bool) -> bool:
    if declared_types:
        return is_numeric(arrow_type)
    return not _is_nested(arrow_type)


def _is_nested(arrow_type: pa.DataType) -> bool:
    return bool(pa.types.is_nested(arrow_type))


def _check_feature_count(tensor: TensorInfo, features: tuple[str, ...], source: str) -> None:
    """`--features` feeds an input whose every dimension is known and whose size matches."""
    dims = tensor.shape[1:]
    size = math.prod(d for d in dims if d is not None)
    if None in dims or not dims or size != len(features):
        needs = "an unknown number of" if None in dims or not dims else str(size)
        raise DataError(
            f"{source}: model input {tensor.name!r} of shape {shape_text(tensor.shape)} takes "
            f"{needs} values per row but --features names {len(features)}: "
            f"{', '.join(features)}"
        )


def _check_default_count(
    tensor: TensorInfo, columns: tuple[str, ...], source: str, declared_types: bool
) -> None:
    width = tensor.shape[1]
    if len(columns) == width:
        return
    which = "numeric columns" if declared_types else "columns"
    raise DataError(
        f"{source}: model input {tensor.name!r} takes {width} feature columns but the input "
        f"has {len(columns)} {which} not named in --keep_columns: "
        f"{', '.join(columns) or '(none)'}; name the features in order with --features "
        "or the other columns with --keep_columns"
    )


def _require(columns: Sequence[str], available: Sequence[str], source: str, option: str) -> None:
    missing = [c for c in columns if c not in available]
    if missing:
        raise DataError(
            f"{source}: {option} names missing column(s): {', '.join(missing)}; "
            f"available columns: {', '.join(available)}{_delimiter_hint(available)}"
        )


def _delimiter_hint(available: Sequence[str]) -> str:
    """A hint when a CSV header read as one column holds another separator."""
    if len(available) != 1:
        return ""
    found = [d for d in (";", "|", "\t") if d in available[0]]
    return f" (one column: is the file separated by {found[0]!r}? see --delimiter)" if found else ""


def is_numeric(arrow_type: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_decimal(arrow_type)
        or pa.types.is_boolean(arrow_type)
    )
