"""Convert Arrow chunks into the NumPy arrays the model's inputs take, row by row.

Given a file's `ColumnMapping` (`columns.py`), `to_model_arrays` converts each mapped column
to its input's dtype and shape; a row that cannot be converted (a null, a value out of
range, a list of the wrong length) is left out with the reason, never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchpredict.columns import ColumnMapping, RunMapping, is_numeric
from batchpredict.errors import DataError
from batchpredict.tensors import TensorInfo, shape_text


@dataclass(frozen=True)
class RowProblem:
    """A row that cannot be fed to the model: its position in the chunk and the reason."""

    index: int
    column: str
    reason: str


@dataclass(frozen=True)
class Converted:
    """A chunk converted for the model, without the rows that could not be."""

    arrays: dict[str, np.ndarray]
    #: Rows converted, as a mask over the chunk; None when every row was.
    good: np.ndarray | None
    #: The bad rows in chunk order, each with the first problem found in it.
    problems: tuple[RowProblem, ...]

    @property
    def rows(self) -> int:
        """How many rows were converted."""
        return len(next(iter(self.arrays.values()))) if self.arrays else 0


class _Problems:
    """Collects the first problem of each bad row; reasons are formatted only when kept."""

    def __init__(self) -> None:
        self.found: dict[int, RowProblem] = {}

    def add(self, indices: np.ndarray, column: str, reason: str | Callable[[int], str]) -> None:
        for position, index in enumerate(indices.tolist()):
            if index not in self.found:
                text = reason if isinstance(reason, str) else reason(position)
                self.found[index] = RowProblem(index, column, text)

    def mask(self, rows: int) -> np.ndarray:
        bad = np.zeros(rows, dtype=bool)
        bad[list(self.found)] = True
        return bad


def to_model_arrays(
    table: pa.Table,
    mapping: ColumnMapping | RunMapping,
    source: str,
    fill_value: float | None = None,
) -> Converted:
    """Convert one chunk into `{input name: array}` with the model's dtypes and shapes.

    Row-level problems (null or NaN without `fill_value`, a list of the wrong length, an
    integer that does not fit) leave their rows out and are reported; a column whose type
    cannot feed its input at all raises `DataError`.
    """
    problems = _Problems()
    for binding in mapping.bindings:
        for name in binding.columns:
            column = table.column(name)
            if _is_list(column.type) and not binding.stacked:
                _check_list(column, name, binding.tensor, source, problems)
            else:
                _check_scalar(column, name, binding.tensor, source, fill_value, problems)
    good: np.ndarray | None = None
    if problems.found:
        good = ~problems.mask(table.num_rows)
        table = table.filter(pa.array(good))
    arrays: dict[str, np.ndarray] = {}
    for binding in mapping.bindings:
        tensor = binding.tensor
        if binding.stacked:
            out = np.empty((table.num_rows, len(binding.columns)), dtype=tensor.dtype)
            for j, name in enumerate(binding.columns):
                out[:, j] = _scalar_values(table.column(name), tensor, fill_value)
            # `--features` into an image-like input: row-major, the one reshape done.
            arrays[tensor.name] = out.reshape((table.num_rows, *tensor.shape[1:]))
        else:
            name = binding.columns[0]
            arrays[tensor.name] = _column_array(
                table.column(name), name, tensor, source, fill_value
            )
    found = tuple(problems.found[i] for i in sorted(problems.found))
    return Converted(arrays, good, found)


def _check_scalar(
    column: pa.ChunkedArray,
    name: str,
    tensor: TensorInfo,
    source: str,
    fill_value: float | None,
    problems: _Problems,
) -> None:
    _check_convertible(column.type, name, tensor, source)
    fills = fill_value is not None and tensor.dtype != "string"
    if column.null_count and not fills:
        problems.add(_where(column.is_null()), name, "value is null")
    if pa.types.is_floating(column.type) and not fills:
        problems.add(_where(pc.is_nan(column)), name, "value is NaN")
    _check_int_range(column, name, tensor, None, problems)


def _check_list(
    column: pa.ChunkedArray, name: str, tensor: TensorInfo, source: str, problems: _Problems
) -> None:
    """Mark rows whose (nested) lists do not match the input's shape, or hold null/NaN."""
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    wanted, _ = _list_layout(array.type, name, tensor, source)
    if array.null_count:
        problems.add(_where(array.is_null()), name, "value is null")
    level: pa.Array = array
    owner = np.arange(len(array))  # the row each element of `level` belongs to
    for expected in wanted:
        lengths = pc.list_value_length(level).to_numpy(zero_copy_only=False)
        want = expected if expected is not None else _first_length(lengths, owner, problems)
        bad = np.flatnonzero(lengths != want)
        problems.add(owner[bad], name, _length_reason(lengths[bad], want, tensor))
        owner = owner[pc.list_parent_indices(level).to_numpy()]
        level = level.flatten()
        if level.null_count:
            problems.add(np.unique(owner[_where(level.is_null())]), name, "null inside a list")
    _check_convertible(level.type, name, tensor, source)
    if pa.types.is_floating(level.type):
        problems.add(np.unique(owner[_where(pc.is_nan(level))]), name, "NaN inside a list")
    _check_int_range(level, name, tensor, owner, problems)


def _length_reason(found: np.ndarray, want: int, tensor: TensorInfo) -> Callable[[int], str]:
    def reason(i: int) -> str:
        return (
            f"list of length {int(found[i])} where model input {tensor.name!r} "
            f"of shape {shape_text(tensor.shape)} needs {want}"
        )

    return reason


def _first_length(lengths: np.ndarray, owner: np.ndarray, problems: _Problems) -> int:
    """The length an open dimension takes: that of the first row not already bad."""
    for position, row in enumerate(owner.tolist()):
        if row not in problems.found and not np.isnan(lengths[position]):
            return int(lengths[position])
    return 0


def _where(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Indices where a boolean Arrow array is true (nulls count as false)."""
    if mask.null_count:  # else not filled: a compute call costs more than a small chunk
        mask = pc.fill_null(mask, False)
    return np.flatnonzero(mask.to_numpy(zero_copy_only=False))


def _check_int_range(
    values: pa.Array | pa.ChunkedArray,
    name: str,
    tensor: TensorInfo,
    owner: np.ndarray | None,
    problems: _Problems,
) -> None:
    """Integers must fit the input's integer dtype: an int64 id never wraps into int32.
    `owner` is the row of each value (None: the value's own index)."""
    if not (pa.types.is_integer(values.type) and tensor.dtype.startswith(("int", "uint"))):
        return
    limits = np.iinfo(tensor.dtype)
    bounds = pc.min_max(values).as_py()
    low, high = bounds["min"], bounds["max"]
    if low is None or (limits.min <= low and high <= limits.max):
        return
    data = pc.fill_null(values, 0).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero((data < limits.min) | (data > limits.max))
    problems.add(
        bad if owner is None else owner[bad],
        name,
        lambda i: f"value {data[bad[i]]} does not fit model input {tensor.name!r} ({tensor.dtype})",
    )


def _column_array(
    column: pa.ChunkedArray, name: str, tensor: TensorInfo, source: str, fill_value: float | None
) -> np.ndarray:
    inner = tuple(tensor.shape[1:])
    if _is_list(column.type):
        return _list_values(column, name, tensor, source)
    values = _scalar_values(column, tensor, fill_value)
    if any(d not in (1, None) for d in inner):
        raise DataError(
            f"{source}: column {name!r} holds scalars but model input {tensor.name!r} "
            f"expects shape {shape_text(tensor.shape)}; store it as a list column"
        )
    return values.reshape((len(values), *([1] * len(inner))))


def _scalar_values(
    column: pa.ChunkedArray, tensor: TensorInfo, fill_value: float | None
) -> np.ndarray:
    """The column's values in the input's dtype; nulls and NaN replaced by `fill_value`."""
    if tensor.dtype == "string":
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=object)
    if pa.types.is_decimal(column.type) or pa.types.is_null(column.type):
        column = column.cast(pa.float64())
    if fill_value is not None and column.null_count:
        column = pc.fill_null(column, pa.scalar(fill_value).cast(column.type, safe=False))
    values = np.asarray(column.to_numpy(), dtype=tensor.dtype)
    if fill_value is not None and values.dtype.kind == "f":
        values = np.where(np.isnan(values), values.dtype.type(fill_value), values)
    return values


def _list_layout(
    arrow_type: pa.DataType, name: str, tensor: TensorInfo, source: str
) -> tuple[list[int | None], list[int | None]]:
    """The length each list level must have, and the dimensions the innermost level holds.

    Outer list levels map one to one onto the input's dimensions; the innermost level holds
    the remaining dimensions flattened, so a flat list of H*W*C values feeds `[None, H, W, C]`
    and a flat list of T values feeds `[None, T, 1]`.
    """
    inner = list(tensor.shape[1:])
    depth = _list_depth(arrow_type)
    if depth > len(inner):
        raise DataError(
            f"{source}: column {name!r} is a list nested {depth} deep but model input "
            f"{tensor.name!r} expects shape {shape_text(tensor.shape)}"
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
            f"{tensor.name!r} of shape {shape_text(tensor.shape)} with open dimensions; "
            "store one list level per dimension"
        )
    return [*inner[: depth - 1], innermost], rest


def _list_values(column: pa.ChunkedArray, name: str, tensor: TensorInfo, source: str) -> np.ndarray:
    """Flatten a (nested) list column whose rows all passed `_check_list` into an array."""
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    wanted, rest = _list_layout(array.type, name, tensor, source)
    dims: list[int] = []
    level: pa.Array = array
    for expected in wanted:
        lengths = pc.list_value_length(level).to_numpy(zero_copy_only=False)
        dims.append(expected if expected is not None else (int(lengths[0]) if len(lengths) else 0))
        level = level.flatten()
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
        ok = is_numeric(arrow_type) or pa.types.is_null(arrow_type)
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


def _numpy_dtype(tensor: TensorInfo) -> str | type:
    return object if tensor.dtype == "string" else tensor.dtype
