"""pyarrow's `AzureFileSystem` for `abfs://` and `abfss://` URIs, with the account, its
key and its endpoint from where Azure's own tools look in the environment.

- `AZURE_STORAGE_CONNECTION_STRING`, the connection string the Azure portal, the SDKs
  and Azurite print (`DefaultEndpointsProtocol=...;AccountName=...;AccountKey=...;
  BlobEndpoint=...`): the account, its key or SAS token, and its endpoint.
- Else `AZURE_STORAGE_ACCOUNT_NAME` with `AZURE_STORAGE_ACCOUNT_KEY` or
  `AZURE_STORAGE_SAS_TOKEN` (the names adlfs and delta-rs read; the Azure CLI's
  `AZURE_STORAGE_ACCOUNT` and `AZURE_STORAGE_KEY` are read too).
- Else pyarrow's default (the Azure SDK's DefaultAzureCredential).

Two URI forms are ours: `abfs://CONTAINER/path` (the account from the environment) and
`abfs://CONTAINER@ACCOUNT.dfs.core.windows.net/path` (the environment's key and endpoint
apply when they are for that account). Any other form (`abfs://ACCOUNT@host:port/...`,
`abfs://ACCOUNT.blob.core.windows.net/CONTAINER/...`) is pyarrow's `from_uri`'s.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass

import pyarrow.fs as pafs

from batchpredict.store_options import DEFAULT_STORAGE_TIMEOUT, Unreachable, no_connection

#: `CONTAINER@ACCOUNT.dfs.SUFFIX` (or `.blob.`): Azure's own form of an abfs authority.
_NAMED_ACCOUNT = re.compile(
    r"(?P<container>[^@/]+)@(?P<account>[a-z0-9]+)\.(?:dfs|blob)\.(?P<suffix>[^/:@]+)"
)
#: A container name alone (3-63 lower-case letters, digits and hyphens): no host in it.
_CONTAINER = re.compile(r"[a-z0-9][a-z0-9-]*")
#: Public Azure's endpoint suffix (`ACCOUNT.blob.core.windows.net`).
_PUBLIC_SUFFIX = "core.windows.net"


class AzureSettingsError(ValueError):
    """The environment's Azure settings cannot address the URI (the message has no secret)."""


@dataclass(frozen=True)
class AzureAccount:
    """Where an account's blobs are and how to sign for them. `blob_authority` is
    `host[:port]` for an endpoint with the account in the path (Azurite), or `.blob.SUFFIX`
    for one with the account in the host name (pyarrow's two forms)."""

    name: str
    key: str | None = None
    sas_token: str | None = None
    scheme: str = "https"
    blob_authority: str = f".blob.{_PUBLIC_SUFFIX}"

    @property
    def blob_host(self) -> str:
        """The `host[:port]` the account's blobs are served from."""
        if self.blob_authority.startswith("."):
            return f"{self.name}{self.blob_authority}"
        return self.blob_authority

    def filesystem(self) -> pafs.FileSystem:
        """pyarrow's filesystem for the account (the account is its root)."""
        # Azure's Data Lake (dfs) endpoint is the blob one's twin; an emulator serves both
        # on one port. pyarrow uses it only when the account has a hierarchical namespace.
        dfs = self.blob_authority.replace(".blob.", ".dfs.", 1)
        return pafs.AzureFileSystem(
            account_name=self.name,
            account_key=self.key,
            sas_token=self.sas_token,
            blob_storage_authority=self.blob_authority,
            blob_storage_scheme=self.scheme,
            dfs_storage_authority=dfs,
            dfs_storage_scheme=self.scheme,
        )


def azure_filesystem(
    uri: str, timeout: float = DEFAULT_STORAGE_TIMEOUT
) -> tuple[pafs.FileSystem, str] | None:
    """The filesystem of an `abfs://CONTAINER/...` or `abfs://CONTAINER@ACCOUNT.dfs...`
    URI and the URI's path in it (`CONTAINER/path`); None for the forms pyarrow's
    `from_uri` reads itself. Raises AzureSettingsError when no account can be found.
    pyarrow's Azure client has no timeout settings: an endpoint that takes no connection
    within `timeout` gets a stand-in that fails every request at once (`Unreachable`)."""
    rest = uri.partition("://")[2]
    authority, _, path = rest.partition("/")
    named = _NAMED_ACCOUNT.fullmatch(authority)
    if named:
        account = _account_named(named["account"], named["suffix"])
        container = named["container"]
    elif _CONTAINER.fullmatch(authority):
        found = environment_account()
        if found is None:
            raise AzureSettingsError(
                "no Azure storage account: set AZURE_STORAGE_CONNECTION_STRING or "
                "AZURE_STORAGE_ACCOUNT_NAME, or name it in the URI "
                f"(abfs://{authority}@ACCOUNT.dfs.core.windows.net/...)"
            )
        account, container = found, authority
    else:
        return None
    path = f"{container}/{path}".rstrip("/")
    why = no_connection(account.scheme, account.blob_host, timeout)
    if why is not None:
        return pafs.PyFileSystem(Unreachable(why)), path
    return account.filesystem(), path


def _account_named(name: str, suffix: str) -> AzureAccount:
    """The account a URI names: the environment's settings when they are for it, else
    the Azure SDK's default credential at `ACCOUNT.blob.SUFFIX`."""
    configured = environment_account()
    if configured is not None and configured.name == name:
        return configured
    return AzureAccount(name, blob_authority=f".blob.{suffix}")


def environment_account() -> AzureAccount | None:
    """The account the environment configures (see the module's docstring), or None."""
    connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if connection:
        return parse_connection_string(connection)
    name = os.environ.get("AZURE_STORAGE_ACCOUNT_NAME") or os.environ.get("AZURE_STORAGE_ACCOUNT")
    if not name:
        return None
    key = os.environ.get("AZURE_STORAGE_ACCOUNT_KEY") or os.environ.get("AZURE_STORAGE_KEY")
    sas = os.environ.get("AZURE_STORAGE_SAS_TOKEN") if not key else None
    return AzureAccount(name, key=key or None, sas_token=(sas or "").lstrip("?") or None)


def parse_connection_string(text: str) -> AzureAccount:
    """An Azure Storage connection string's account: `AccountName`, `AccountKey` or
    `SharedAccessSignature`, and `BlobEndpoint` or `DefaultEndpointsProtocol` with
    `EndpointSuffix`; `UseDevelopmentStorage=true` is the emulator's well-known account on
    127.0.0.1:10000. Keys are case-insensitive, as in Azure's SDKs."""
    fields: dict[str, str] = {}
    for part in text.split(";"):
        field, equals, value = part.strip().partition("=")
        if equals:
            fields[field.strip().lower()] = value.strip()
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        return AzureAccount(
            _EMULATOR_ACCOUNT, _EMULATOR_KEY, scheme="http", blob_authority="127.0.0.1:10000"
        )
    name = fields.get("accountname")
    if not name:
        raise AzureSettingsError("AZURE_STORAGE_CONNECTION_STRING has no AccountName")
    key = fields.get("accountkey") or None
    sas = (fields.get("sharedaccesssignature") or "").lstrip("?") or None
    endpoint = fields.get("blobendpoint")
    if endpoint:
        scheme, authority = _blob_endpoint(endpoint, name)
    else:
        scheme = fields.get("defaultendpointsprotocol", "https").lower()
        authority = f".blob.{fields.get('endpointsuffix') or _PUBLIC_SUFFIX}"
    return AzureAccount(name, key, None if key else sas, scheme, authority)


def _blob_endpoint(endpoint: str, account: str) -> tuple[str, str]:
    """`BlobEndpoint` as pyarrow's scheme and authority: `http://host:port/ACCOUNT`
    (Azurite's path style) -> `host:port`; `https://ACCOUNT.blob.example` -> `.blob.example`.
    An endpoint of neither form cannot be given to pyarrow, and is refused."""
    parsed = urllib.parse.urlsplit(endpoint)
    scheme, host, path = parsed.scheme.lower(), parsed.netloc, parsed.path.strip("/")
    if scheme not in ("http", "https") or not host:
        raise AzureSettingsError(
            "AZURE_STORAGE_CONNECTION_STRING: BlobEndpoint is not an http(s):// URL"
        )
    if path == account:
        return scheme, host
    if not path and host.startswith(f"{account}."):
        return scheme, host[len(account) :]
    raise AzureSettingsError(
        "AZURE_STORAGE_CONNECTION_STRING: BlobEndpoint must be http(s)://ACCOUNT.host or "
        "http(s)://host[:port]/ACCOUNT, as pyarrow addresses accounts"
    )


#: Azurite's (and the old storage emulator's) account and key, public and the same for
#: everyone: what `UseDevelopmentStorage=true` stands for.
_EMULATOR_ACCOUNT = "devstoreaccount1"
_EMULATOR_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
