"""Column mapping and conversion to model arrays, with the errors a user sees."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from batchpredict.columns import plan_mapping
from batchpredict.conversion import RowProblem, to_model_arrays
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
    mapping = plan_mapping(
        STACKED, table().schema, "f.csv", keep_columns=["id", "name", "seq"]
    ).for_file(table().schema, "f.csv")
    assert mapping.bindings[0].columns == ("a", "b", "c")
    assert mapping.kept == ("id", "name", "seq")
    arrays = to_model_arrays(table(), mapping, "f.csv").arrays
    np.testing.assert_array_equal(
        arrays["features"], np.array([[0.5, 1, 2], [1.5, 2, 3]], np.float32)
    )
    assert arrays["features"].dtype == np.float32


def test_stacked_count_mismatch_lists_what_was_found() -> None:
    with pytest.raises(
        DataError,
        match=r"f.csv: model input 'features' takes 3 feature columns but the input has 4 "
        r"numeric columns not named in --keep_columns: id, a, b, c",
    ):
        plan_mapping(STACKED, table().schema, "f.csv")


def test_features_option_order_and_default_kept() -> None:
    mapping = plan_mapping(STACKED, table().schema, "f.csv", features=["c", "a", "b"]).for_file(
        table().schema, "f.csv"
    )
    assert mapping.bindings[0].columns == ("c", "a", "b")
    assert mapping.kept == ("id", "name", "seq")


def test_named_inputs_read_same_named_columns() -> None:
    inputs = (
        TensorInfo("a", "float32", (None,)),
        TensorInfo("seq", "float32", (None, 2)),
        TensorInfo("name", "string", (None, 1)),
    )
    mapping = plan_mapping(inputs, table().schema, "f.parquet").for_file(
        table().schema, "f.parquet"
    )
    arrays = to_model_arrays(table(), mapping, "f.parquet").arrays
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


def test_list_length_mismatch_is_a_row_problem() -> None:
    inputs = (TensorInfo("seq", "float32", (None, 3)),)
    mapping = plan_mapping(inputs, table().schema, "f.parquet").for_file(
        table().schema, "f.parquet"
    )
    converted = to_model_arrays(table(), mapping, "f.parquet")
    assert converted.rows == 0
    assert converted.problems[0] == RowProblem(
        0, "seq", "list of length 2 where model input 'seq' of shape [None, 3] needs 3"
    )


def test_null_and_nan_rows_are_left_out_with_their_reason() -> None:
    data = table().set_column(1, "a", pa.array([None, float("nan")]))
    data = pa.concat_tables([data, table()])
    mapping = plan_mapping(STACKED, data.schema, "f.csv", features=["a", "b", "c"]).for_file(
        data.schema, "f.csv"
    )
    converted = to_model_arrays(data, mapping, "f.csv")
    assert [(p.index, p.reason) for p in converted.problems] == [
        (0, "value is null"),
        (1, "value is NaN"),
    ]
    assert converted.good is not None and converted.good.tolist() == [False, False, True, True]
    np.testing.assert_array_equal(converted.arrays["features"][:, 0], [0.5, 1.5])


def test_fill_value_replaces_nulls_and_nan() -> None:
    data = table().set_column(1, "a", pa.array([None, float("nan")]))
    mapping = plan_mapping(STACKED, data.schema, "f.csv", features=["a", "b", "c"]).for_file(
        data.schema, "f.csv"
    )
    converted = to_model_arrays(data, mapping, "f.csv", fill_value=-1.0)
    assert not converted.problems
    np.testing.assert_array_equal(converted.arrays["features"][:, 0], [-1.0, -1.0])


@pytest.mark.parametrize(("column", "dtype"), [("name", "float32"), ("a", "int64")])
def test_unsafe_casts_are_refused(column: str, dtype: str) -> None:
    inputs = (TensorInfo(column, dtype, (None,)),)
    mapping = plan_mapping(inputs, table().schema, "f.csv").for_file(table().schema, "f.csv")
    with pytest.raises(DataError, match=f"column '{column}' has type .* needs {dtype}"):
        to_model_arrays(table(), mapping, "f.csv")


def test_keep_columns_must_exist() -> None:
    with pytest.raises(DataError, match="--keep_columns names missing column"):
        plan_mapping(
            STACKED, table().schema, "f.csv", features=["a", "b", "c"], keep_columns=["nope"]
        )


def _one(column: pa.Array, tensor: TensorInfo) -> np.ndarray:
    data = pa.table({tensor.name: column})
    mapping = plan_mapping((tensor,), data.schema, "f.parquet").for_file(data.schema, "f.parquet")
    converted = to_model_arrays(data, mapping, "f.parquet")
    assert not converted.problems, converted.problems
    return converted.arrays[tensor.name]


def _problems(column: pa.Array, tensor: TensorInfo) -> list[tuple[int, str]]:
    data = pa.table({tensor.name: column})
    mapping = plan_mapping((tensor,), data.schema, "f.parquet").for_file(data.schema, "f.parquet")
    return [(p.index, p.reason) for p in to_model_arrays(data, mapping, "f.parquet").problems]


def test_image_from_flat_list_is_reshaped_to_the_declared_shape() -> None:
    pixels = np.arange(2 * 4 * 3 * 2, dtype=np.float32).reshape(2, 4 * 3 * 2)
    column = pa.array(list(pixels), pa.list_(pa.float32()))
    image = _one(column, TensorInfo("img", "float32", (None, 4, 3, 2)))
    np.testing.assert_array_equal(image, pixels.reshape(2, 4, 3, 2))


def test_image_from_nested_lists() -> None:
    images = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2, 1)
    column = pa.array(images.tolist(), pa.list_(pa.list_(pa.list_(pa.float32()))))
    np.testing.assert_array_equal(
        _one(column, TensorInfo("img", "float32", (None, 3, 2, 1))), images
    )


def test_sequence_of_vectors_and_open_length() -> None:
    seqs = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    column = pa.array(seqs.tolist(), pa.list_(pa.list_(pa.float64())))
    got = _one(column, TensorInfo("seq", "float32", (None, None, 3)))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, seqs)


def test_flat_sequence_feeds_trailing_unit_dimension() -> None:
    column = pa.array([[1, 2, 3], [4, 5, 6]], pa.list_(pa.int64()))
    got = _one(column, TensorInfo("seq", "float32", (None, 3, 1)))
    assert got.shape == (2, 3, 1)


def test_wrong_inner_length_is_the_row_of_the_element() -> None:
    column = pa.array(
        [[[1.0, 2.0, 3.0]] * 5, [[1.0, 2.0, 3.0]] * 4 + [[1.0, 2.0]], [[0.0] * 3] * 5]
    )
    tensor = TensorInfo("seq", "float32", (None, 5, 3))
    assert _problems(column, tensor) == [
        (1, "list of length 2 where model input 'seq' of shape [None, 5, 3] needs 3")
    ]


def test_flat_list_of_the_wrong_size_is_not_silently_reshaped() -> None:
    column = pa.array([list(range(12)), list(range(11))], pa.list_(pa.float32()))
    assert _problems(column, TensorInfo("img", "float32", (None, 2, 2, 3))) == [
        (1, "list of length 11 where model input 'img' of shape [None, 2, 2, 3] needs 12")
    ]


def test_null_and_nan_inside_a_list() -> None:
    column = pa.array([[1.0, 2.0], [3.0, None], None, [float("nan"), 1.0]])
    assert _problems(column, TensorInfo("seq", "float32", (None, 2))) == [
        (1, "null inside a list"),
        (2, "value is null"),
        (3, "NaN inside a list"),
    ]


def test_integer_ids_must_fit_the_input_dtype() -> None:
    ok = _one(pa.array([1, 2], pa.int64()), TensorInfo("ids", "int32", (None,)))
    assert ok.dtype == np.int32
    assert _problems(
        pa.array([1, 3_000_000_000], pa.int64()), TensorInfo("ids", "int32", (None,))
    ) == [(1, "value 3000000000 does not fit model input 'ids' (int32)")]


def test_open_dimension_takes_the_first_good_rows_length() -> None:
    column = pa.array([None, [1.0, 2.0, 3.0], [1.0], [4.0, 5.0, 6.0]])
    tensor = TensorInfo("seq", "float32", (None, None))
    assert [i for i, _ in _problems(column, tensor)] == [0, 2]


def test_string_input_keeps_text() -> None:
    got = _one(pa.array(["good film", "bad film"]), TensorInfo("text", "string", (None,)))
    assert got.tolist() == ["good film", "bad film"]


def test_text_formats_count_every_column_not_kept_as_a_candidate() -> None:
    """In CSV and JSON a column's type is a guess: a text column may be a numeric one
    with a few bad values, so it is a candidate and the count must still match."""
    with pytest.raises(
        DataError, match=r"has 4 columns not named in --keep_columns: a, b, c, name"
    ):
        plan_mapping(
            STACKED, table().schema, "f.csv", keep_columns=["id", "seq"], declared_types=False
        )
    mapping = plan_mapping(
        STACKED, table().schema, "f.csv", keep_columns=["id", "seq", "name"], declared_types=False
    )
    assert mapping.read_columns == ("a", "b", "c")
    assert mapping.guessed_order and mapping.decided_by == "the columns of f.csv"
    assert "pin this order for every run with: --features a,b,c" in "\n".join(mapping.describe())


def test_run_mapping_is_applied_by_name_to_a_reordered_file() -> None:
    mapping = plan_mapping(
        STACKED, table().schema, "first.parquet", keep_columns=["id", "name", "seq"]
    )
    reordered = table().select(["c", "seq", "a", "name", "b", "id"])
    converted = to_model_arrays(
        reordered, mapping.for_file(reordered.schema, "second.parquet"), "x"
    )
    np.testing.assert_array_equal(
        converted.arrays["features"], np.array([[0.5, 1, 2], [1.5, 2, 3]], np.float32)
    )


def test_a_later_file_without_a_mapped_column_is_refused_by_name() -> None:
    mapping = plan_mapping(STACKED, table().schema, "first.csv", features=["a", "b", "c"])
    later = table().drop_columns(["b"])
    with pytest.raises(
        DataError,
        match=r"second.csv: missing column\(s\) b that the model reads \(column mapping from "
        r"--features\); available columns: id, a, c, name, seq",
    ):
        mapping.for_file(later.schema, "second.csv")


def test_features_fill_any_single_input_of_that_size_row_major() -> None:
    image = (TensorInfo("img", "float32", (None, 2, 2, 1)),)
    data = pa.table({f"p{i}": pa.array([float(i), float(10 + i)]) for i in range(4)})
    mapping = plan_mapping(image, data.schema, "px.csv", features=["p0", "p1", "p2", "p3"])
    pixels = to_model_arrays(data, mapping, "px.csv").arrays["img"]
    assert pixels.shape == (2, 2, 2, 1)
    np.testing.assert_array_equal(pixels[1, :, :, 0], [[10, 11], [12, 13]])
    assert "4 columns, reshaped row-major to [None, 2, 2, 1]" in "\n".join(mapping.describe())
    with pytest.raises(
        DataError, match=r"takes 4 values per row but --features names 3: p0, p1, p2"
    ):
        plan_mapping(image, data.schema, "px.csv", features=["p0", "p1", "p2"])


def test_read_types_name_the_numeric_columns_a_text_reader_must_parse() -> None:
    inputs = (
        TensorInfo("a", "float32", (None,)),
        TensorInfo("b", "int32", (None, 1)),
        TensorInfo("name", "string", (None, 1)),
        TensorInfo("seq", "float32", (None, 2)),
    )
    mapping = plan_mapping(inputs, table().schema, "f.jsonl", declared_types=False)
    assert mapping.read_types(table().schema, "f.jsonl") == {"a": pa.float64(), "b": pa.int64()}
