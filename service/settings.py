"""Service configuration: one validated class, read from `CXR_*` environment variables and `cxr serve` flags.

Flags override the environment, which overrides the defaults. Lists (`providers`, `api_keys`,
`cors_origins`) are comma-separated in both. Build `Settings` in `create_app()` or `server.main()`, never at
import time, so a test can pass `Settings(model_dir=tmp_path)` directly.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.flags import add_flags, from_flags, split_commas
from service.imaging.decode import DEFAULT_MAX_PIXELS
from service.imaging.dicom import DicomPolicy
from service.inference.cpus import usable_cpus
from service.inference.model import default_repository, find_versions

CommaList = Annotated[list[str], NoDecode]
_SHA256_KEY = re.compile(r"sha256:[0-9a-f]{64}")


def _default_decode_workers() -> int:
    # One decode thread per core, the ONNX Runtime thread sharing a core with one of them: decoding costs
    # about ten times inference, so a core kept for ONNX Runtime mostly idles (docs/design-notes.md).
    return usable_cpus()


class Settings(BaseSettings):
    """Everything `cxr serve` can be told; invalid combinations fail here, before any model is loaded."""

    model_config = SettingsConfigDict(env_prefix="CXR_", extra="ignore", frozen=True)

    host: str = Field(default="127.0.0.1", description="interface to bind")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port to bind")
    model_dir: Path = Field(
        default_factory=default_repository, description="model repository (<name>/<version>/card.json)"
    )
    default_model: str | None = Field(
        default=None, description="model used without ?model= (default: default.json, else the first name)"
    )
    max_batch_size: int = Field(default=8, ge=1, le=256, description="largest batch sent to ONNX Runtime")
    batch_policy: Literal["auto", "fixed"] = Field(
        default="auto",
        description="auto: batch only up to the size whose warm-up images/s still rose (at most "
        "max_batch_size); fixed: up to max_batch_size",
    )
    # 0 by default: a wait never raised images/s where it was measured (docs/design-notes.md); what a wait
    # buys is fewer, larger batches (device time) for some latency, an operator's choice.
    max_queue_delay_ms: float = Field(
        default=0.0,
        ge=0,
        le=10_000,
        description="longest wait for a batch to fill, from its oldest request, when that one arrived while "
        "a batch was running (an image reaching an idle worker runs at once)",
    )
    queue_capacity: int = Field(
        default=64, ge=1, description="queued images per model before requests are refused"
    )
    overload_status: Literal[503, 429] = Field(default=503, description="status sent when the queue is full")
    retry_after_s: int = Field(
        default=1, ge=0, description="Retry-After sent with overload and not-ready answers"
    )
    request_timeout_s: float = Field(
        default=10.0, gt=0, description="per-request deadline (504 when exceeded)"
    )
    max_upload_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1, description="request body limit in bytes (413)"
    )
    max_v2_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1,
        description="/v2 infer body limit in bytes, JSON or binary tensors (413); 16 MiB holds 64 224x224 "
        "images as binary tensors, about 16 as JSON",
    )
    max_pixels: int = Field(
        default=DEFAULT_MAX_PIXELS, ge=1, description="pixel limit per image, from its header (413)"
    )
    providers: CommaList = Field(
        default_factory=list, description="ONNX Runtime providers in order (default: TensorRT, CUDA, CPU)"
    )
    intra_op_threads: int = Field(
        default=1, ge=1, le=256, description="ONNX Runtime threads per model session"
    )
    decode_workers: int = Field(
        default_factory=_default_decode_workers,
        ge=1,
        le=256,
        description="threads decoding and preprocessing",
    )
    api_keys: CommaList = Field(
        default_factory=list,
        repr=False,
        description="accepted API keys, plain or sha256:<hex> (empty: no key needed); prefer the env variable",
    )
    malloc_retain_mib: int = Field(
        default=256,
        ge=0,
        le=65536,
        description="freed memory glibc keeps for reuse instead of returning it per request (0: its defaults)",
    )
    dicom_modalities: CommaList = Field(
        default_factory=lambda: ["CR", "DX", "DR"],
        description="DICOM Modality values accepted (empty: any); others are refused with 400",
    )
    dicom_check_body_part: bool = Field(
        default=True, description="refuse DICOM whose BodyPartExamined is present and not a chest"
    )
    drain_timeout_s: float = Field(default=30.0, ge=0, description="on shutdown, time to finish queued work")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="log level"
    )
    domain_policy: Literal["refuse", "flag"] = Field(
        default="refuse",
        description="an image that is not a frontal chest radiograph: refuse (422) or classify and flag it",
    )
    cors_origins: CommaList = Field(
        default_factory=list, description="origins allowed by CORS (default: none)"
    )

    @property
    def dicom_policy(self) -> DicomPolicy:
        """Which DICOM images the decoder accepts (service.imaging.dicom)."""
        return DicomPolicy(
            modalities=frozenset(modality.upper() for modality in self.dicom_modalities),
            check_body_part=self.dicom_check_body_part,
        )

    @field_validator("providers", "api_keys", "cors_origins", "dicom_modalities", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        return split_commas(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if key.lower().startswith("sha256:") and not _SHA256_KEY.fullmatch(key.lower()):
                raise ValueError("a hashed API key must be sha256: followed by 64 hex digits")
        return [key.lower() if key.lower().startswith("sha256:") else key for key in keys]

    @model_validator(mode="after")
    def _check_repository(self) -> Settings:
        versions = find_versions(self.model_dir)
        if not versions:
            raise ValueError(
                f"model_dir {self.model_dir} holds no model (<name>/<version>/card.json): point --model-dir "
                "or CXR_MODEL_DIR at a model repository"
            )
        names = {version.parent.name for version in versions}
        if self.default_model is not None and self.default_model not in names:
            raise ValueError(
                f"default_model {self.default_model!r} is not in {self.model_dir} ({sorted(names)})"
            )
        return self


def add_cli_flags(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per Settings field (service.flags)."""
    add_flags(parser, Settings)


def from_cli(args: argparse.Namespace) -> Settings:
    """Settings from parsed flags, falling back to `CXR_*` variables and the defaults."""
    return from_flags(Settings, args)
