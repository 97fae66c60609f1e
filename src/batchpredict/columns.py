"""Map input columns onto the model's inputs and convert Arrow chunks into NumPy arrays.

The mapping is planned once per run (`plan_mapping`, from the first input) and applied to
every file by column name (`RunMapping.for_file`). *Named*: every model input reads the
column of the same name (scalars, or list columns for inputs of shape `[None, T]` /
`[None, T, d]`). *Stacked*: a model with one input reads several scalar columns side by
side — the ones named by `--features` (reshaped row-major when the input has more
dimensions), or else, for a `[None, k]` input, the first input's candidate columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchpredict.errors import DataError
from batchpredict.tensors import TensorInfo


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
                how = f"{len(b.columns)} columns, reshaped row-major to {_shape(b.tensor.shape)}"
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
        return _is_numeric(arrow_type)
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
            f"{source}: model input {tensor.name!r} of shape {_shape(tensor.shape)} takes "
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


def _is_numeric(arrow_type: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_decimal(arrow_type)
        or pa.types.is_boolean(arrow_type)
    )


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
    _check_int_range(column, name, tensor, np.arange(len(column)), problems)


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
            f"of shape {_shape(tensor.shape)} needs {want}"
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
    return np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))


def _check_int_range(
    values: pa.Array | pa.ChunkedArray,
    name: str,
    tensor: TensorInfo,
    owner: np.ndarray,
    problems: _Problems,
) -> None:
    """Integers must fit the input's integer dtype: an int64 id never wraps into int32."""
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
        owner[bad],
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
            f"expects shape {_shape(tensor.shape)}; store it as a list column"
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


def _numpy_dtype(tensor: TensorInfo) -> str | type:
    return object if tensor.dtype == "string" else tensor.dtype


def _shape(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"
