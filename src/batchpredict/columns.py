"""Map input columns onto the model's inputs and convert Arrow chunks into NumPy arrays.

Two mappings exist. *Named*: every model input reads the column of the same name (scalars,
or list columns for inputs of shape `[None, T]` / `[None, T, d]`). *Stacked*: a model with
one `[None, k]` input whose name is not a column reads k scalar columns side by side — the
ones named by `--features`, or else every numeric column that is not kept-only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchpredict.errors import DataError
from batchpredict.model import TensorInfo


@dataclass(frozen=True)
class InputBinding:
    """One model input and the column(s) that feed it."""

    tensor: TensorInfo
    columns: tuple[str, ...]
    #: True when several scalar columns are stacked into one `[None, k]` input.
    stacked: bool


@dataclass(frozen=True)
class ColumnMapping:
    """How a file's columns feed the model, and which columns are carried to the output."""

    bindings: tuple[InputBinding, ...]
    kept: tuple[str, ...]

    @property
    def read_columns(self) -> tuple[str, ...]:
        """Every column the model reads, in binding order."""
        return tuple(c for b in self.bindings for c in b.columns)

    def describe(self) -> list[str]:
        """Lines for `inspect`: which columns feed which input."""
        lines = []
        for b in self.bindings:
            shape = "x".join("?" if d is None else str(d) for d in b.tensor.shape)
            how = f"{len(b.columns)} columns stacked" if b.stacked else "column"
            lines.append(
                f"{b.tensor.name} ({b.tensor.dtype}[{shape}]) <- {how}: {', '.join(b.columns)}"
            )
        lines.append(f"kept columns: {', '.join(self.kept) if self.kept else '(none)'}")
        return lines


def plan_mapping(
    inputs: Sequence[TensorInfo],
    schema: pa.Schema,
    source: str,
    features: Sequence[str] | None = None,
    keep_columns: Sequence[str] | None = None,
) -> ColumnMapping:
    """Decide which columns feed which input; raise `DataError` naming what is missing."""
    available = list(schema.names)
    _require(keep_columns or (), available, source, "--keep_columns")
    if features is None and all(t.name in available for t in inputs):
        bindings = tuple(InputBinding(t, (t.name,), stacked=False) for t in inputs)
    elif len(inputs) == 1 and len(inputs[0].shape) == 2 and inputs[0].shape[1] is not None:
        tensor = inputs[0]
        columns = _stacked_columns(tensor, schema, source, features, keep_columns or ())
        bindings = (InputBinding(tensor, columns, stacked=True),)
    else:
        if features is not None:
            raise DataError(
                f"{source}: --features needs a model with one input of shape [None, k]; "
                f"this model has inputs {', '.join(t.name for t in inputs)}"
            )
        missing = [t.name for t in inputs if t.name not in available]
        raise DataError(
            f"{source}: missing column(s) for model input(s): {', '.join(missing)}; "
            f"available columns: {', '.join(available)}"
        )
    read = {c for b in bindings for c in b.columns}
    if keep_columns is None:
        kept = tuple(c for c in available if c not in read)
    else:
        kept = tuple(keep_columns)
    return ColumnMapping(bindings, kept)


def _require(columns: Sequence[str], available: Sequence[str], source: str, option: str) -> None:
    missing = [c for c in columns if c not in available]
    if missing:
        raise DataError(
            f"{source}: {option} names missing column(s): {', '.join(missing)}; "
            f"available columns: {', '.join(available)}"
        )


def _stacked_columns(
    tensor: TensorInfo,
    schema: pa.Schema,
    source: str,
    features: Sequence[str] | None,
    keep_columns: Sequence[str],
) -> tuple[str, ...]:
    width = tensor.shape[1]
    if features is not None:
        _require(features, schema.names, source, "--features")
        columns = tuple(features)
        how = "--features names"
    else:
        columns = tuple(
            f.name for f in schema if f.name not in keep_columns and _is_numeric(f.type)
        )
        how = "found numeric columns (not kept-only)"
    if len(columns) != width:
        raise DataError(
            f"{source}: model input {tensor.name!r} takes {width} feature columns but {how} "
            f"{len(columns)}: {', '.join(columns) or '(none)'}; name them with --features "
            "or exclude keys with --keep_columns"
        )
    return columns


def _is_numeric(arrow_type: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_decimal(arrow_type)
        or pa.types.is_boolean(arrow_type)
    )


def to_model_arrays(
    table: pa.Table, mapping: ColumnMapping, source: str, first_row: int
) -> dict[str, np.ndarray]:
    """Convert one chunk into `{input name: array}` with the model's dtypes and shapes.

    `first_row` is the chunk's 0-based offset in its file, so errors name the data row.
    """
    arrays: dict[str, np.ndarray] = {}
    for binding in mapping.bindings:
        tensor = binding.tensor
        if binding.stacked:
            out = np.empty((table.num_rows, len(binding.columns)), dtype=tensor.dtype)
            for j, name in enumerate(binding.columns):
                out[:, j] = _scalar_column(table.column(name), name, tensor, source, first_row)
            arrays[tensor.name] = out
        else:
            name = binding.columns[0]
            arrays[tensor.name] = _column_array(table.column(name), name, tensor, source, first_row)
    return arrays


def _column_array(
    column: pa.ChunkedArray, name: str, tensor: TensorInfo, source: str, first_row: int
) -> np.ndarray:
    inner = tuple(tensor.shape[1:])
    if _is_list(column.type):
        return _list_column(column, name, tensor, source, first_row)
    values = _scalar_column(column, name, tensor, source, first_row)
    if any(d not in (1, None) for d in inner):
        raise DataError(
            f"{source}: column {name!r} holds scalars but model input {tensor.name!r} "
            f"expects shape {_shape(tensor.shape)}; store it as a list column"
        )
    return values.reshape((len(values), *([1] * len(inner))))


def _scalar_column(
    column: pa.ChunkedArray, name: str, tensor: TensorInfo, source: str, first_row: int
) -> np.ndarray:
    _check_convertible(column.type, name, tensor, source)
    _check_no_nulls(column, name, source, first_row)
    _check_int_range(column, name, tensor, source, lambda i: first_row + i + 1)
    if tensor.dtype == "string":
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=object)
    if pa.types.is_decimal(column.type):
        column = column.cast(pa.float64())
    return np.asarray(column.to_numpy(), dtype=tensor.dtype)


def _list_column(
    column: pa.ChunkedArray, name: str, tensor: TensorInfo, source: str, first_row: int
) -> np.ndarray:
    """Flatten a (nested) list column into `[rows, *shape]`, checking every level's length.

    Outer list levels map one to one onto the input's dimensions; the innermost level holds
    the remaining dimensions flattened, so a flat list of H*W*C values feeds `[None, H, W, C]`
    and a flat list of T values feeds `[None, T, 1]`.
    """
    _check_no_nulls(column, name, source, first_row)
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    inner = list(tensor.shape[1:])
    depth = _list_depth(array.type)
    if depth > len(inner):
        raise DataError(
            f"{source}: column {name!r} is a list nested {depth} deep but model input "
            f"{tensor.name!r} expects shape {_shape(tensor.shape)}"
        )
    rest = inner[depth - 1 :]
    known = [d for d in rest if d is not None]
    if len(known) == len(rest):
        innermost: int | None = math.prod(known)
    elif len(rest) == 1:
        innermost = None  # any length, the same in every row of the chunk
    else:
        raise DataError(
            f"{source}: column {name!r}: a list nested {depth} deep cannot fill model input "
            f"{tensor.name!r} of shape {_shape(tensor.shape)} with open dimensions; "
            "store one list level per dimension"
        )
    wanted = [*inner[: depth - 1], innermost]
    dims: list[int] = []
    level: pa.Array = array
    for expected in wanted:
        lengths = pc.list_value_length(level).to_numpy(zero_copy_only=False)
        want = expected if expected is not None else (int(lengths[0]) if len(lengths) else 0)
        bad = np.flatnonzero(lengths != want)
        if len(bad):
            raise DataError(
                f"{source}: row {_row_of(bad[0], dims, first_row)}, column {name!r}: list of "
                f"length {int(lengths[bad[0]])} where model input {tensor.name!r} of shape "
                f"{_shape(tensor.shape)} needs {want}"
            )
        dims.append(want)
        level = level.flatten()
        if level.null_count:
            first = int(np.flatnonzero(level.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(
                f"{source}: row {_row_of(first, dims, first_row)}, column {name!r}: "
                "null inside a list"
            )
    _check_convertible(level.type, name, tensor, source)
    _check_int_range(level, name, tensor, source, lambda i: _row_of(i, dims, first_row))
    values = np.asarray(level.to_numpy(zero_copy_only=False), dtype=_numpy_dtype(tensor))
    shape = [d if d is not None else dims[-1] for d in rest]
    return values.reshape((len(array), *dims[:-1], *shape))


def _list_depth(arrow_type: pa.DataType) -> int:
    depth = 0
    while _is_list(arrow_type):
        arrow_type = arrow_type.value_type
        depth += 1
    return depth


def _is_list(arrow_type: pa.DataType) -> bool:
    return bool(
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or pa.types.is_fixed_size_list(arrow_type)
    )


def _check_int_range(
    values: pa.Array | pa.ChunkedArray,
    name: str,
    tensor: TensorInfo,
    source: str,
    row_of: Callable[[int], int],
) -> None:
    """Integers must fit the input's integer dtype: an int64 id never wraps into int32."""
    if not (pa.types.is_integer(values.type) and tensor.dtype.startswith(("int", "uint"))):
        return
    limits = np.iinfo(tensor.dtype)
    bounds = pc.min_max(values).as_py()
    low, high = bounds["min"], bounds["max"]
    if low is None or (limits.min <= low and high <= limits.max):
        return
    data = values.to_numpy(zero_copy_only=False)
    first = int(np.flatnonzero((data < limits.min) | (data > limits.max))[0])
    raise DataError(
        f"{source}: row {row_of(first)}, column {name!r}: value {data[first]} does not fit "
        f"model input {tensor.name!r} ({tensor.dtype})"
    )


def _row_of(index: int, outer_dims: list[int], first_row: int) -> int:
    """The 1-based file row of element `index` of a level nested below `outer_dims`."""
    per_row = int(np.prod(outer_dims)) if outer_dims else 1
    return first_row + int(index) // max(per_row, 1) + 1


def _check_convertible(arrow_type: pa.DataType, name: str, tensor: TensorInfo, source: str) -> None:
    """Allow safe casts only: ints/bools to floats, ints to wider ints; never float/string->int."""
    target = tensor.dtype
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if target == "string":
        ok = (
            pa.types.is_string(arrow_type)
            or pa.types.is_large_string(arrow_type)
            or pa.types.is_binary(arrow_type)
        )
    elif target.startswith("float"):
        ok = _is_numeric(arrow_type) or pa.types.is_null(arrow_type)
    elif target.startswith(("int", "uint")):
        ok = pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type)
    elif target == "bool":
        ok = pa.types.is_boolean(arrow_type)
    else:
        ok = False
    if not ok:
        raise DataError(
            f"{source}: column {name!r} has type {arrow_type}; model input {tensor.name!r} "
            f"needs {target} and that conversion is not safe"
        )


def _check_no_nulls(column: pa.ChunkedArray, name: str, source: str, first_row: int) -> None:
    nulls = column.null_count
    if not nulls and pa.types.is_floating(column.type):
        nulls = pc.sum(pc.is_nan(column)).as_py() or 0
        if nulls:
            first = int(np.flatnonzero(np.isnan(column.to_numpy()))[0])
            raise DataError(f"{source}: row {first_row + first + 1}, column {name!r}: value is NaN")
    if nulls:
        first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{source}: row {first_row + first + 1}, column {name!r}: value is null")


def _numpy_dtype(tensor: TensorInfo) -> str | type:
    return object if tensor.dtype == "string" else tensor.dtype


def _shape(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"
