"""Azure (`abfs://`): where the account, its key and its endpoint come from (the
environment's connection string or account variables), both URI forms against Azurite,
and no key or SAS signature in any message. Behaviour shared with the other stores is
tested over every store in test_object_storage*.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from batchpredict import storage, store_azure
from batchpredict.store_azure import AzureAccount, AzureSettingsError
from conftest import Completed, make_frame, read_with_library, write_with_library
from stores import AZURITE_ACCOUNT, AZURITE_KEY, Store

RunMain = Callable[..., Completed]
KEY = "c2VjcmV0LWtleS1vZi10aGUtYWNjb3VudA=="
AZURE_VARIABLES = [name for name in storage._SDK_VARIABLES if name.startswith("AZURE_")]


@pytest.fixture
def no_azure_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in AZURE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("connection", "expected"),
    [
        (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};"
            "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;",
            AzureAccount("devstoreaccount1", KEY, None, "http", "127.0.0.1:10000"),
        ),
        (
            f"DefaultEndpointsProtocol=https;AccountName=scoring;AccountKey={KEY};"
            "EndpointSuffix=core.usgovcloudapi.net",
            AzureAccount("scoring", KEY, None, "https", ".blob.core.usgovcloudapi.net"),
        ),
        (
            "BlobEndpoint=https://scoring.blob.core.windows.net/;"
            "SharedAccessSignature=sv=2024-11-04&sp=rl&sig=abc%3D;accountname=scoring",
            AzureAccount("scoring", None, "sv=2024-11-04&sp=rl&sig=abc%3D", "https"),
        ),
        (
            "UseDevelopmentStorage=true",
            AzureAccount(AZURITE_ACCOUNT, AZURITE_KEY, None, "http", "127.0.0.1:10000"),
        ),
    ],
    ids=["azurite", "sovereign-cloud", "sas-and-host-endpoint", "development-storage"],
)
def test_connection_strings_name_the_account_its_key_and_its_endpoint(
    connection: str, expected: AzureAccount
) -> None:
    assert store_azure.parse_connection_string(connection) == expected


@pytest.mark.parametrize(
    ("connection", "message"),
    [
        (f"AccountKey={KEY};BlobEndpoint=http://127.0.0.1:1/a", "has no AccountName"),
        (f"AccountName=a;AccountKey={KEY};BlobEndpoint=http://proxy:8080/", "BlobEndpoint must"),
        (f"AccountName=a;AccountKey={KEY};BlobEndpoint=127.0.0.1:1/a", "not an http(s):// URL"),
    ],
)
def test_connection_strings_pyarrow_cannot_follow_are_refused_without_the_key(
    connection: str, message: str
) -> None:
    with pytest.raises(AzureSettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        store_azure.parse_connection_string(connection)
    try:
        store_azure.parse_connection_string(connection)
    except AzureSettingsError as exc:
        assert KEY not in str(exc)


def test_the_account_variables_of_adlfs_and_of_the_azure_cli(
    no_azure_environment: pytest.MonkeyPatch,
) -> None:
    monkeypatch = no_azure_environment
    assert store_azure.environment_account() is None
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "cli")
    monkeypatch.setenv("AZURE_STORAGE_KEY", KEY)
    assert store_azure.environment_account() == AzureAccount("cli", KEY)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "scoring")
    monkeypatch.delenv("AZURE_STORAGE_KEY")
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "?sv=1&sig=x")
    assert store_azure.environment_account() == AzureAccount("scoring", sas_token="sv=1&sig=x")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", f"AccountName=conn;AccountKey={KEY}")
    assert store_azure.environment_account() == AzureAccount("conn", KEY)


def test_a_uri_naming_another_account_does_not_get_the_environments_key(
    no_azure_environment: pytest.MonkeyPatch,
) -> None:
    no_azure_environment.setenv(
        "AZURE_STORAGE_CONNECTION_STRING", f"AccountName=a1;AccountKey={KEY}"
    )
    assert store_azure._account_named("a1", "dfs.core.windows.net").key == KEY
    other = store_azure._account_named("a2", "core.windows.net")
    assert (other.name, other.key, other.blob_authority) == ("a2", None, ".blob.core.windows.net")


def test_a_container_without_an_account_exits_66_saying_where_to_set_one(
    no_azure_environment: pytest.MonkeyPatch, tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", "abfs://exports/d.csv",
        "--output_file", str(tmp_path / "o.csv"),
    )  # fmt: skip
    assert result.returncode == 66, result.stderr
    assert (
        "abfs://exports/d.csv: no Azure storage account: set AZURE_STORAGE_CONNECTION_STRING"
        in (result.stderr)
    )


def test_a_sas_signature_in_a_stores_message_is_masked() -> None:
    error = OSError(
        "GetProperties failed for 'https://a.blob.core.windows.net/c/d.csv?sv=2024&sp=r&sig=S3CR3T'"
        ". Azure Error: [AuthorizationFailure] 403 denied"
    )
    cleaned = storage.clean(error)
    assert "S3CR3T" not in cleaned and "d.csv?***'" in cleaned and "access denied" in cleaned


def test_both_uri_forms_reach_the_same_container(
    abfs_store: Store, tmp_path: Path, mlp_model: Path, run_main: RunMain
) -> None:
    """`abfs://CONTAINER/...` takes the account from the environment;
    `abfs://CONTAINER@ACCOUNT.dfs.core.windows.net/...` names it, and gets the
    environment's key and endpoint because they are for that account."""
    store = abfs_store
    name = store.new_bucket()
    frame = make_frame(60, seed=11)
    store.upload(name, "in/d.csv", write_with_library(frame, tmp_path / "d.csv", "csv"))
    named = f"abfs://{name}@{AZURITE_ACCOUNT}.dfs.core.windows.net"
    result = run_main(
        "predict", "--model", str(mlp_model), "--input_file", f"abfs://{name}/in/d.csv",
        "--output_file", f"{named}/out/d.csv", "--keep_columns", "id,segment",
        "--summary_file", str(tmp_path / "summary.json"), env=store.env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert store.keys(name, "out/") == ["out/d.csv"]
    (tmp_path / "out.csv").write_bytes(store.get(name, "out/d.csv"))
    assert read_with_library(tmp_path / "out.csv", "csv")["id"].tolist() == frame["id"].tolist()
    summary = (tmp_path / "summary.json").read_text()
    assert json.loads(summary)["outputs"] == [f"{named}/out/d.csv"]
    assert AZURITE_KEY not in result.stderr + result.stdout + summary
