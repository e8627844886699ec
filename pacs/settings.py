"""`cxr pacs` configuration: one validated class, from `CXR_PACS_*` environment variables and flags.

Flags override the environment, which overrides the defaults. Secrets (DICOMweb password or token, the
service API key) are better given through the environment than on a command line that `ps` shows.
The mode follows from what is given: `--listen` runs the C-STORE listener; otherwise `--dicomweb-url`
selects DICOMweb and `--dimse-host` DIMSE (C-FIND + C-GET or C-MOVE, C-STORE).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pacs.retry import Backoff
from service.flags import add_flags, from_flags, split_commas

if TYPE_CHECKING:
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

    @field_validator("modalities", "study_uids", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        return split_commas(value)

    @field_validator("modalities")
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one modality is needed")
        return [item.upper() for item in value]

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


def add_cli_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field (service.flags); `modalities` is `--modality`, repeated once per value."""
    add_flags(parser, PacsSettings, list_flags={"modalities": "--modality", "study_uids": "--study-uid"})


def from_cli(args: argparse.Namespace) -> PacsSettings:
    """Settings from parsed flags, falling back to `CXR_PACS_*` variables and the defaults."""
    return from_flags(PacsSettings, args)
