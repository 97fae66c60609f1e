"""Column mapping and conversion to model arrays, with the errors a user sees."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from batchpredict.columns import plan_mapping, to_model_arrays
from batchpredict.errors import DataError
from batchpredict.model import TensorInfo

STACKED = (TensorInfo("features", "float32", (None, 3)),)


def table() -> pa.Table:
    return pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),
            "a": pa.array([0.5, 1.5]),
            "b": pa.array([1, 2], pa.int32()),
            "c": pa.array([2.0, 3.0], pa.float32()),
            "name": ["x", "y"],
            "seq": pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32())),
        }
    )


def test_stacked_default_uses_numeric_columns_not_kept() -> None:
    mapping = plan_mapping(STACKED, table().schema, "f.csv", keep_columns=["id", "name", "seq"])
    assert mapping.bindings[0].columns == ("a", "b", "c")
    assert mapping.kept == ("id", "name", "seq")
    arrays = to_model_arrays(table(), mapping, "f.csv", 0)
    np.testing.assert_array_equal(
        arrays["features"], np.array([[0.5, 1, 2], [1.5, 2, 3]], np.float32)
    )
    assert arrays["features"].dtype == np.float32


def test_stacked_count_mismatch_lists_what_was_found() -> None:
    with pytest.raises(
        DataError,
        match=r"f.csv: model input 'features' takes 3 feature columns but .* 4: id, a, b, c",
    ):
        plan_mapping(STACKED, table().schema, "f.csv")


def test_features_option_order_and_default_kept() -> None:
    mapping = plan_mapping(STACKED, table().schema, "f.csv", features=["c", "a", "b"])
    assert mapping.bindings[0].columns == ("c", "a", "b")
    assert mapping.kept == ("id", "name", "seq")


def test_named_inputs_read_same_named_columns() -> None:
    inputs = (
        TensorInfo("a", "float32", (None,)),
        TensorInfo("seq", "float32", (None, 2)),
        TensorInfo("name", "string", (None, 1)),
    )
    mapping = plan_mapping(inputs, table().schema, "f.parquet")
    arrays = to_model_arrays(table(), mapping, "f.parquet", 0)
    assert arrays["a"].shape == (2,)
    np.testing.assert_array_equal(arrays["seq"], [[1, 2], [3, 4]])
    assert arrays["name"].tolist() == [["x"], ["y"]]
    assert mapping.kept == ("id", "b", "c")


def test_missing_named_column_names_file_missing_and_available() -> None:
    inputs = (TensorInfo("a", "float32", (None,)), TensorInfo("zzz", "float32", (None,)))
    with pytest.raises(
        DataError,
        match=r"f.avro: missing column\(s\) for model input\(s\): zzz; available columns: id, a, b",
    ):
        plan_mapping(inputs, table().schema, "f.avro")


def test_list_length_mismatch_names_row_and_column() -> None:
    inputs = (TensorInfo("seq", "float32", (None, 3)),)
    mapping = plan_mapping(inputs, table().schema, "f.parquet")
    with pytest.raises(
        DataError, match=r"f.parquet: row 11, column 'seq': list of length 2, .* expects 3"
    ):
        to_model_arrays(table(), mapping, "f.parquet", first_row=10)


def test_null_feature_is_a_data_error_with_row() -> None:
    data = table().set_column(1, "a", pa.array([0.5, None]))
    mapping = plan_mapping(STACKED, data.schema, "f.csv", features=["a", "b", "c"])
    with pytest.raises(DataError, match=r"f.csv: row 102, column 'a': value is null"):
        to_model_arrays(data, mapping, "f.csv", first_row=100)


def test_nan_feature_is_a_data_error_with_row() -> None:
    data = table().set_column(1, "a", pa.array([float("nan"), 1.0]))
    mapping = plan_mapping(STACKED, data.schema, "f.csv", features=["a", "b", "c"])
    with pytest.raises(DataError, match=r"row 1, column 'a': value is NaN"):
        to_model_arrays(data, mapping, "f.csv", first_row=0)


@pytest.mark.parametrize(("column", "dtype"), [("name", "float32"), ("a", "int64")])
def test_unsafe_casts_are_refused(column: str, dtype: str) -> None:
    inputs = (TensorInfo(column, dtype, (None,)),)
    mapping = plan_mapping(inputs, table().schema, "f.csv")
    with pytest.raises(DataError, match=f"column '{column}' has type .* needs {dtype}"):
        to_model_arrays(table(), mapping, "f.csv", 0)


def test_keep_columns_must_exist() -> None:
    with pytest.raises(DataError, match="--keep_columns names missing column"):
        plan_mapping(
            STACKED, table().schema, "f.csv", features=["a", "b", "c"], keep_columns=["nope"]
        )
