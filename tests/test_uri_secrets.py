"""Hostile locations: secrets in URIs (query strings, percent-encoded and token-only
userinfo) are refused without a trace in any output, and unsupported schemes are usage
errors."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchpredict.config import refuse_credentials
from batchpredict.errors import UsageError
from conftest import Completed, make_frame, s3_keys, start_moto_server, write_with_library

RunMain = Callable[..., Completed]
SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYzEXAMPLEKEY"

#: Each URI carries SECRET; `{b}` is the bucket.
SECRET_URIS = [
    f"s3://{{b}}/out?access_key=AKIAEXAMPLE&secret_key={SECRET}",
    f"s3://{{b}}/out?X-Amz-Signature={SECRET}",
    f"s3://AKIAEXAMPLE%3A{SECRET}@{{b}}/out",
    f"s3://{SECRET}@{{b}}/out",
    f"gs://{SECRET}@{{b}}/out",
    f"https://{SECRET}@models.example.com/m.keras",
    f"abfs://AKIAEXAMPLE:{SECRET}@acct.dfs.core.windows.net/out",
    f"abfs://c%3A{SECRET}@acct.dfs.core.windows.net/out",
    f"s3://AKIAEXAMPLE:{SECRET}@{{b}}/out?x=1",
]


def _everything_written(root: Path) -> str:
    return "".join(
        path.name + path.read_text(errors="replace") for path in root.rglob("*") if path.is_file()
    )


@pytest.mark.parametrize(
    "uri",
    [
        "abfs://container@account.dfs.core.windows.net/exports/",
        "hdfs://etl@namenode:8020/exports/",
        "s3://b/exports/2026-11-0?.csv",
        "s3://b/date=2026-11-0?/*.parquet",
        "/local/what?x=1.csv",
    ],
)
def test_plain_locations_and_glob_wildcards_pass(uri: str) -> None:
    refuse_credentials(uri)


@pytest.mark.parametrize("uri", SECRET_URIS)
def test_a_secret_in_a_uri_is_refused_and_masked(uri: str) -> None:
    with pytest.raises(UsageError) as caught:
        refuse_credentials(uri.format(b="scores"))
    assert SECRET not in str(caught.value)
    assert "***" in str(caught.value) and "refused" in str(caught.value)


LOCATIONS = [
    "--model",
    "--input_file",
    "--output_file",
    "--output_dir",
    "--rejects_file",
    "--summary_file",
    "--lock_file",
    "--metrics_file",
    "--log_file",
    "--s3_endpoint_url",
]


@pytest.mark.parametrize("option", LOCATIONS)
@pytest.mark.parametrize("uri", SECRET_URIS[:4] + SECRET_URIS[5:6])
def test_no_option_lets_a_secret_through_to_any_output(
    option: str, uri: str, tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    data = write_with_library(make_frame(5), tmp_path / "d.csv", "csv")
    options = {
        "--model": str(mlp_model),
        "--input_file": str(data),
        "--output_dir": str(tmp_path / "out"),
        "--summary_file": str(tmp_path / "summary.json"),
        "--metrics_file": str(tmp_path / "metrics.prom"),
        "--log_file": str(tmp_path / "log.jsonl"),
        "--on_error": "skip",
    }
    if option == "--output_file":
        del options["--output_dir"]
    value = uri.format(b="scores")
    if option == "--s3_endpoint_url":
        value = f"https://{SECRET}@minio.example.com"
    options[option] = value
    args = [part for pair in options.items() for part in pair]
    result = run_main("predict", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "refused" in result.stderr
    assert SECRET not in result.stdout + result.stderr + _everything_written(tmp_path)


@pytest.mark.parametrize("command", ["inspect", "validate"])
def test_inspect_and_validate_refuse_too(
    command: str, tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    data = write_with_library(make_frame(5), tmp_path / "d.csv", "csv")
    for model, inputs in [
        (f"s3://models/m.keras?secret_key={SECRET}", str(data)),
        (str(mlp_model), f"s3://{SECRET}@exports/d.csv"),
    ]:
        result = run_main(command, "--model", model, "--input_file", inputs, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert SECRET not in result.stdout + result.stderr + _everything_written(tmp_path)


@pytest.mark.slow
def test_a_secret_never_reaches_a_bucket(
    bucket: Any, s3_env: dict[str, str], tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    client, name = bucket
    data = write_with_library(make_frame(5), tmp_path / "d.csv", "csv")
    client.upload_file(str(data), name, "in/d.csv")
    for uri in SECRET_URIS[:4]:
        for option in ("--output_dir", "--input_file"):
            args = {"--input_file": f"s3://{name}/in/", "--output_dir": f"s3://{name}/out"}
            args[option] = uri.format(b=name)
            result = run_main(
                "predict", "--model", str(mlp_model), *[p for kv in args.items() for p in kv],
                "--summary_file", str(tmp_path / "s.json"), env=s3_env, cwd=tmp_path,
            )  # fmt: skip
            assert result.returncode == 2, result.stderr
            assert SECRET not in result.stdout + result.stderr + _everything_written(tmp_path)
    assert s3_keys(client, name, "") == ["in/d.csv"]


@pytest.mark.parametrize("scheme", ["foo", "nosuchstore"])
def test_a_scheme_no_store_knows_exits_2_listing_the_supported_ones(
    scheme: str, tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    for option in ("--input_file", "--output_dir", "--model"):
        args = {
            "--model": str(mlp_model),
            "--input_file": str(write_with_library(make_frame(5), tmp_path / "d.csv", "csv")),
            "--output_dir": str(tmp_path / "out"),
        }
        args[option] = f"{scheme}://b/x.csv"
        result = run_main("predict", *[p for kv in args.items() for p in kv])
        assert result.returncode == 2, result.stderr
        error = str(result.log_lines()[-1]["error"])
        assert f"{scheme}://" in error and "s3://" in error and "gs://" in error, error


def test_a_scheme_fsspec_knows_is_opened_through_it(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    """ftp:// is fsspec's: a server that is not there is a missing input (66), no traceback."""
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", "ftp://127.0.0.1:1/d.csv",
        "--output_file", str(tmp_path / "o.csv"),
    )  # fmt: skip
    assert result.returncode == 66, result.stderr
    error = str(result.log_lines()[-1]["error"])
    assert error.startswith("ftp://127.0.0.1:1/d.csv: cannot open ftp:// storage"), error
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def s3_refusing_env() -> Iterator[dict[str, str]]:
    """An S3 server that checks credentials, and an environment whose key it does not know."""
    proc, env = start_moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    yield {**env, "AWS_ACCESS_KEY_ID": "AKIAUNKNOWNKEY000000", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_refused_credentials_on_an_output_folder_exit_73_in_one_line(
    s3_refusing_env: dict[str, str], tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    local = write_with_library(make_frame(20), tmp_path / "d.csv", "csv")
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(local),
        "--output_dir", "s3://scores/out", "--keep_columns", "id,segment", env=s3_refusing_env,
    )  # fmt: skip
    assert result.returncode == 73, result.stderr
    failed = result.log_lines()[-1]
    error = str(failed["error"])
    assert error.startswith("s3://scores/out/_SUCCESS: cannot delete: access denied"), error
    assert "traceback" not in failed and "s3cr3t" not in result.stderr


HOSTILE = "a\x1b]0;pwned\x07\x1b[31m\x9bz"


@pytest.mark.parametrize("exists", [True, False])
def test_console_logs_show_control_characters_as_escapes(
    exists: bool, tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    data = tmp_path / f"{HOSTILE}.csv"
    if exists:
        write_with_library(make_frame(5), data, "csv")
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", str(data),
        "--output_dir", str(tmp_path / "out"), "--keep_columns", "id,segment",
        "--log_format", "console", "--log_file", str(tmp_path / "log.txt"),
    )  # fmt: skip
    assert result.returncode == (0 if exists else 66), result.stderr
    logged = (tmp_path / "log.txt").read_text()
    for text in (logged, result.stderr):
        assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text, text
    assert "\\x1b]0;pwned" in logged


def test_console_escaping_covers_the_event_and_a_traceback() -> None:
    from batchpredict.observe import _escape_console_text, escape_controls

    assert escape_controls("x\x1b[2J\ny\t\x7f\x85") == "x\\x1b[2J\\ny\\t\\x7f\\x85"
    escaped = _escape_console_text(
        None, "error", {"event": f"read {HOSTILE}", "exception": f"Traceback\n  {HOSTILE}"}
    )
    assert escaped["event"] == "read " + escape_controls(HOSTILE)
    assert escaped["exception"] == "Traceback\n  " + escape_controls(HOSTILE)


def test_validate_and_inspect_quote_names_that_need_it(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    plain = write_with_library(make_frame(5), tmp_path / "plain.csv", "csv")
    forged = write_with_library(
        make_frame(5), tmp_path / "x.csv\nok: forged.csv (5 rows checked)\n.csv", "csv"
    )
    hostile = write_with_library(make_frame(5), tmp_path / f"{HOSTILE}.csv", "csv")
    args = ["--model", str(mlp_model), "--keep_columns", "id,segment"]
    for path in (plain, forged, hostile):
        args += ["--input_file", str(path)]
    result = run_main("validate", *args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    ok = [line for line in lines if line.startswith("ok:")]
    assert ok == [
        f"ok: {plain} (5 rows checked)",
        f"ok: {json.dumps(str(forged))} (5 rows checked)",
        f"ok: {json.dumps(str(hostile))} (5 rows checked)",
    ], lines
    assert "\x1b" not in result.stdout
    result = run_main("inspect", *args)
    assert result.returncode == 0, result.stderr
    assert f"input {json.dumps(str(forged))} (csv): kept columns: id, segment" in result.stdout
    assert f"input {plain} (csv): kept columns" in result.stdout
    assert "\x1b" not in result.stdout and "\nok: forged" not in result.stdout


@pytest.mark.slow
def test_an_object_with_an_empty_path_segment_is_skipped_with_a_warning(
    bucket: Any, s3_env: dict[str, str], tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    client, name = bucket
    data = write_with_library(make_frame(5), tmp_path / "d.csv", "csv")
    for key in ("in/a.csv", "in//x.csv", "in/sub//y.csv", "only//z.csv"):
        client.upload_file(str(data), name, key)
    for pattern in ("in/*.csv", "in/", "in/**/*.csv"):
        out = tmp_path / pattern.replace("/", "_").replace("*", "s")
        result = run_main(
            "predict", "--model", str(mlp_model), "--input_file", f"s3://{name}/{pattern}",
            "--output_dir", str(out), "--keep_columns", "id,segment", env=s3_env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert sorted(p.name for p in out.rglob("*.csv")) == ["a.csv"]
        skipped = [line for line in result.log_lines() if "object" in line]
        assert {line["object"] for line in skipped} == {
            f"s3://{name}/in//x.csv",
            f"s3://{name}/in/sub//y.csv",
        }, skipped
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", f"s3://{name}/only/",
        "--output_dir", str(tmp_path / "o"), env=s3_env,
    )  # fmt: skip
    assert result.returncode == 66, result.stderr
    assert "matched no input file" in str(result.log_lines()[-1]["error"])


def test_globs_and_folders_do_not_follow_symlinked_folders(
    tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    """Both skip `d/link/` (a link to a folder elsewhere); a symlinked file, a link named
    before the first wildcard and a linked folder given itself are read."""
    data = write_with_library(make_frame(5), tmp_path / "src.csv", "csv")
    (tmp_path / "d" / "real").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "d" / "real" / "a.csv").write_bytes(data.read_bytes())
    (tmp_path / "elsewhere" / "b.csv").write_bytes(data.read_bytes())
    (tmp_path / "d" / "link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "d" / "real" / "c.csv").symlink_to(data)
    (tmp_path / "top").symlink_to(tmp_path / "d")
    cases = {
        str(tmp_path / "d" / "**" / "*.csv"): ["a.csv", "c.csv"],
        str(tmp_path / "d" / "*" / "*.csv"): ["a.csv", "c.csv"],
        str(tmp_path / "d"): ["a.csv", "c.csv"],
        str(tmp_path / "top" / "**" / "*.csv"): ["a.csv", "c.csv"],
        str(tmp_path / "d" / "link"): ["b.csv"],
        str(tmp_path / "d" / "link" / "*.csv"): ["b.csv"],
    }
    for index, (value, expected) in enumerate(cases.items()):
        out = tmp_path / f"out{index}"
        result = run_main(
            "predict", "--model", str(mlp_model), "--input_file", value,
            "--output_dir", str(out), "--keep_columns", "id,segment",
        )  # fmt: skip
        assert result.returncode == 0, (value, result.stderr)
        assert sorted(p.name for p in out.rglob("*.csv")) == expected, value
