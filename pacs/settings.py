"""`cxr pacs` configuration: one validated class, from `CXR_PACS_*` environment variables and flags.

Flags override the environment, which overrides the defaults. Secrets (DICOMweb password or token, the
service API key) are better given through the environment than on a command line that `ps` shows.
The mode follows from what is given: `--listen` runs the C-STORE listener; otherwise `--dicomweb-url`
selects DICOMweb and `--dimse-host` DIMSE (C-FIND + C-GET or C-MOVE, C-STORE).

Our DICOM servers (the listener, the C-MOVE destination) accept an association only when it is called
with our AE title and comes from an allowed calling AE title: by default the PACS's (`--pacs-ae`) alone,
since it is the one peer this command is told about; a hospital lists its modalities with
`--allow-calling-ae` (and may restrict addresses with `--allow-peer`).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pacs.retry import Backoff
from pacs.tls import client_context, server_context
from pacs.uids import check_uid
from service.flags import add_flags, from_flags, split_commas

if TYPE_CHECKING:
    from pacs.acceptor import Admission
    from pacs.pipeline import Outputs

CommaList = Annotated[list[str], NoDecode]
_DATE_RANGE = r"^(\d{8})?(-(\d{8})?)?$"
_AE_TITLE = r"^[ -\[\]-~]{1,16}$"  # PS3.5 6.2: 16 characters of the default repertoire, no backslash


def _default_state() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "cxr" / "pacs.sqlite"


class PacsSettings(BaseSettings):
    """Everything `cxr pacs` can be told; invalid combinations fail here, before any connection."""

    model_config = SettingsConfigDict(env_prefix="CXR_PACS_", extra="ignore", frozen=True)

    # --- the classification service
    service_url: str = Field(default="http://127.0.0.1:8000", description="base URL of `cxr serve`")
    service_api_key: SecretStr | None = Field(default=None, description="API key of the service")
    model: str | None = Field(default=None, description="model name (default: the service's default)")
    # --- DICOMweb
    dicomweb_url: str | None = Field(
        default=None, description="DICOMweb root, e.g. http://pacs:8042/dicom-web"
    )
    username: str | None = Field(default=None, description="DICOMweb basic-auth user")
    password: SecretStr | None = Field(default=None, description="DICOMweb basic-auth password")
    token: SecretStr | None = Field(default=None, description="DICOMweb bearer token")
    tls_verify: bool = Field(default=True, description="verify TLS certificates (service and DICOMweb)")
    ca_bundle: Path | None = Field(default=None, description="CA bundle to verify TLS with")
    # --- DIMSE
    dimse_host: str | None = Field(default=None, description="PACS host for C-FIND/C-GET/C-MOVE/C-STORE")
    dimse_port: int = Field(default=104, ge=1, le=65535, description="PACS DICOM port")
    pacs_ae: str = Field(default="ANY-SCP", pattern=_AE_TITLE, description="the PACS's AE title")
    ae_title: str = Field(default="CXR", pattern=_AE_TITLE, description="our AE title")
    retrieve: Literal["get", "move"] = Field(default="get", description="DIMSE retrieval: C-GET or C-MOVE")
    move_port: int = Field(
        default=11113, ge=0, le=65535, description="our port for C-MOVE deliveries (the PACS must know it)"
    )
    # --- listener
    listen: bool = Field(default=False, description="run the C-STORE listener instead of one pass")
    listen_host: str = Field(default="127.0.0.1", description="listener interface (0.0.0.0 for all)")
    listen_port: int = Field(default=11112, ge=0, le=65535, description="listener port")
    spool_dir: Path | None = Field(default=None, description="listener spool (default: beside the state)")
    spool_max_bytes: int = Field(
        default=2 * 1024**3,
        ge=1024**2,
        description="spool size limit in bytes; a C-STORE that does not fit is answered Out of Resources (0xA700)",
    )
    # --- who may talk to the listener and the C-MOVE destination (pacs.acceptor)
    allowed_calling_aes: CommaList = Field(
        default_factory=list,
        description="calling AE titles allowed to associate with the listener and the C-MOVE destination "
        "(default: only --pacs-ae, the PACS this command writes to); others get A-ASSOCIATE-RJ",
    )
    allowed_peers: CommaList = Field(
        default_factory=list,
        description="peer addresses or networks (CIDR) allowed to connect (default: any address, "
        "the AE titles still apply)",
    )
    max_associations: int = Field(default=4, ge=1, le=64, description="concurrent associations accepted")
    max_dataset_bytes: int = Field(
        default=256 * 1024**2,
        ge=1024,
        description="largest dataset accepted by C-STORE, in bytes (larger: Out of Resources)",
    )
    artim_timeout_s: float = Field(
        default=30.0, gt=0, description="drop a connection that sends no association request within this"
    )
    idle_timeout_s: float = Field(
        default=60.0, gt=0, description="drop an association or connection silent for this long"
    )
    # --- DICOM TLS (PS3.15 Annex B.1): listener, C-MOVE destination and DIMSE client
    dicom_tls: bool = Field(
        default=False, description="DICOM TLS on the listener, C-MOVE destination and DIMSE client"
    )
    dicom_tls_cert: Path | None = Field(default=None, description="our certificate (PEM) for DICOM TLS")
    dicom_tls_key: Path | None = Field(default=None, description="the private key (PEM) of --dicom-tls-cert")
    dicom_tls_ca: Path | None = Field(
        default=None, description="CA bundle (PEM) that DICOM TLS peers' certificates are verified with"
    )
    dicom_tls_require_client_cert: bool = Field(
        default=True, description="DICOM TLS servers refuse peers without a certificate --dicom-tls-ca trusts"
    )
    # --- what to process
    modalities: CommaList = Field(default_factory=lambda: ["CR", "DX"], description="modalities searched")
    study_date: str | None = Field(
        default=None, pattern=_DATE_RANGE, description="StudyDate or range YYYYMMDD-YYYYMMDD"
    )
    since_last_run: bool = Field(default=False, description="only studies dated from the last pass on")
    study_uids: CommaList = Field(default_factory=list, description="only these Study Instance UIDs")
    limit: int | None = Field(default=None, ge=1, description="process at most this many new images")
    retry_failed: bool = Field(default=False, description="try images that failed permanently before again")
    check_body_part: bool = Field(default=True, description="skip series whose BodyPartExamined is not chest")
    # --- what is written back
    write: Literal["both", "sr", "sc"] = Field(
        default="both", description="results written back: the SR, the heatmap Secondary Capture, or both"
    )
    sc_colormap: Literal["jet", "turbo", "inferno", "magma", "viridis", "hot"] = Field(
        default="jet", description="colour map of the heatmap in the SC (jet, as the web page draws it)"
    )
    sc_opacity: float = Field(default=0.45, ge=0.0, le=1.0, description="opacity of the heatmap in the SC")
    sc_max_size: int = Field(
        default=1024,
        ge=256,
        le=8192,
        description="longest side of the radiograph in the SC, px (larger images are scaled down)",
    )
    # --- bookkeeping and output
    state: Path = Field(default_factory=_default_state, description="SQLite state store")
    report: Path | None = Field(default=None, description="report file (.jsonl or .csv)")
    dry_run: bool = Field(default=False, description="retrieve and classify, but write nothing anywhere")
    progress: Literal["auto", "bar", "log", "off"] = Field(default="auto", description="progress display")
    workers: int = Field(default=2, ge=1, le=64, description="images processed in parallel")
    timeout_s: float = Field(default=30.0, gt=0, description="timeout of one network call")
    attempts: int = Field(default=8, ge=1, description="tries per network operation")
    backoff_initial_s: float = Field(default=0.5, ge=0, description="first retry delay ceiling")
    backoff_max_s: float = Field(default=30.0, ge=0, description="largest retry delay")
    retry_budget_s: float = Field(
        default=300.0, ge=0, description="time allowed per operation, retries included"
    )

    @field_validator("modalities", "study_uids", "allowed_calling_aes", "allowed_peers", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        return split_commas(value)

    @field_validator("modalities")
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one modality is needed")
        return [item.upper() for item in value]

    @field_validator("study_uids")
    @classmethod
    def _conformant_uids(cls, value: list[str]) -> list[str]:
        for uid in value:
            check_uid(uid, "a --study-uid")
        return value

    @field_validator("allowed_calling_aes")
    @classmethod
    def _ae_titles(cls, value: list[str]) -> list[str]:
        for title in value:
            if not re.fullmatch(_AE_TITLE, title):
                raise ValueError(
                    "an allowed calling AE title is not 1-16 characters of the default repertoire"
                )
        return value

    @field_validator("allowed_peers")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)  # ValueError names the bad item
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> PacsSettings:
        if (self.dicom_tls_cert is None) != (self.dicom_tls_key is None):
            raise ValueError("give --dicom-tls-cert and --dicom-tls-key together")
        for path in (self.dicom_tls_cert, self.dicom_tls_key, self.dicom_tls_ca):
            if path is not None and not path.is_file():
                raise ValueError(f"DICOM TLS file {path} does not exist")
        serving = self.listen or (self.dimse_host is not None and self.retrieve == "move")
        if self.dicom_tls and serving and self.dicom_tls_cert is None:
            raise ValueError(
                "DICOM TLS for the listener or the C-MOVE destination needs --dicom-tls-cert/-key"
            )
        if self.dicom_tls and serving and self.dicom_tls_require_client_cert and self.dicom_tls_ca is None:
            raise ValueError(
                "requiring client certificates needs --dicom-tls-ca (or --no-dicom-tls-require-client-cert)"
            )
        return self

    @model_validator(mode="after")
    def _check_mode(self) -> PacsSettings:
        if not self.listen and not self.dicomweb_url and not self.dimse_host:
            raise ValueError("give --dicomweb-url or --dimse-host (or --listen)")
        if self.listen and not self.dicomweb_url and not self.dimse_host and not self.dry_run:
            raise ValueError("the listener writes results back: give --dicomweb-url or --dimse-host")
        if self.token is not None and self.username is not None:
            raise ValueError("give basic auth (--username/--password) or a bearer --token, not both")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be at least backoff_initial_s")
        return self

    @property
    def mode(self) -> Literal["listen", "dicomweb", "dimse"]:
        if self.listen:
            return "listen"
        return "dicomweb" if self.dicomweb_url else "dimse"

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.attempts, self.backoff_initial_s, self.backoff_max_s, self.retry_budget_s)

    @property
    def verify(self) -> bool | str:
        """httpx's `verify`: False, True, or the CA bundle path."""
        if not self.tls_verify:
            return False
        return str(self.ca_bundle) if self.ca_bundle else True

    @property
    def outputs(self) -> Outputs:
        """What pacs.pipeline writes back per image."""
        from pacs.pipeline import Outputs  # highdicom and the decoders: only when a pass runs
        from pacs.sc import Look

        look = Look(colormap=self.sc_colormap, opacity=self.sc_opacity, max_size=self.sc_max_size)
        return Outputs(sr=self.write in ("both", "sr"), sc=self.write in ("both", "sc"), look=look)

    @property
    def spool(self) -> Path:
        return self.spool_dir or self.state.parent / "spool"

    @property
    def calling_aes(self) -> tuple[str, ...]:
        """Who may associate with our servers. With no list given: the PACS we are configured for, and no
        one else. That is the one peer `cxr pacs` is told about, which is the one that routes images to
        the listener and performs our C-MOVEs; any other modality must be named by the hospital."""
        return tuple(self.allowed_calling_aes) or (self.pacs_ae,)

    def admission(self) -> Admission:
        """The terms our DICOM servers (listener, C-MOVE destination) accept associations on."""
        from pacs.acceptor import Admission  # pynetdicom: only when a server runs

        context = None
        if self.dicom_tls and self.dicom_tls_cert is not None and self.dicom_tls_key is not None:
            context = server_context(
                self.dicom_tls_cert,
                self.dicom_tls_key,
                self.dicom_tls_ca,
                require_client_certificate=self.dicom_tls_require_client_cert,
            )
        return Admission(
            ae_title=self.ae_title,
            calling_aes=self.calling_aes,
            networks=tuple(ipaddress.ip_network(item, strict=False) for item in self.allowed_peers),
            max_associations=self.max_associations,
            artim_timeout_s=self.artim_timeout_s,
            idle_timeout_s=self.idle_timeout_s,
            dimse_timeout_s=self.timeout_s,
            ssl_context=context,
        )

    def client_tls(self) -> ssl.SSLContext | None:
        """The DIMSE client's TLS context, or None without --dicom-tls."""
        if not self.dicom_tls:
            return None
        return client_context(self.dicom_tls_ca, self.dicom_tls_cert, self.dicom_tls_key)

    @property
    def destination(self) -> str:
        """The PACS results are written to, as the ledger keys it (no credentials): the same image written
        to two PACSs is two rows."""
        if self.dicomweb_url:
            parts = urlsplit(self.dicomweb_url)
            host = parts.hostname or ""
            netloc = f"{host}:{parts.port}" if parts.port else host
            return f"dicomweb:{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
        if self.dimse_host:
            return f"dimse:{self.pacs_ae}@{self.dimse_host}:{self.dimse_port}"
        return ""


def add_cli_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field (service.flags); `modalities` is `--modality`, repeated once per value."""
    add_flags(
        parser,
        PacsSettings,
        list_flags={
            "modalities": "--modality",
            "study_uids": "--study-uid",
            "allowed_calling_aes": "--allow-calling-ae",
            "allowed_peers": "--allow-peer",
        },
    )


def from_cli(args: argparse.Namespace) -> PacsSettings:
    """Settings from parsed flags, falling back to `CXR_PACS_*` variables and the defaults."""
    return from_flags(PacsSettings, args)
