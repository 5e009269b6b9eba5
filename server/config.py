"""Server configuration: one validated, immutable model built by the CLI or by tests."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from livescope.security import is_loopback
from livescope.server.providers import RuntimeOptions

_ADDRESS = re.compile(r"tcp://[^/]+:(\d+|\*)|ipc://.+|inproc://.+")  # what ZeroMQ binds


class ServerConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    frames_address: str = "tcp://127.0.0.1:5760"
    results_address: str = "tcp://127.0.0.1:5761"
    metrics_port: int | None = Field(default=9760, ge=0, le=65535, description="None = off")
    model_dirs: tuple[Path, ...] = Field(default=(), description="searched after the shipped models")
    max_frame_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_queued_frames: int = Field(default=256, ge=1, description="all clients together")
    max_queued_frames_per_client: int = Field(default=64, ge=1, description="one client's share")
    max_queued_bytes_per_client: int = Field(default=256 * 2**20, ge=1, description="one client's share, bytes")
    workers: int = Field(default=1, ge=1, le=64, description=(
        "inference workers, each with its own sessions: on GPUs one per device (worker i on GPU i), "
        "on the CPU each with an equal share of the cores"))
    batch_max_frames: int = Field(default=8, ge=1, description="micro-batch size limit")
    batch_wait_ms: float = Field(
        default=0.0, ge=0, description="wait for more frames to batch; 0 = batch what waits")
    result_cache_per_stream: int = Field(
        default=8, ge=0, description="final results kept to answer resent duplicates")
    result_cache_bytes: int = Field(
        default=256 * 2**20, ge=0, description="memory for those results and their frames, all streams together")
    render_pixel_nm: float = Field(default=20.0, gt=0, description="localise streams' running render")
    focus_alarm_um: float = Field(default=1.0, gt=0, description=(
        "a psf result whose tiles' median |defocus| is beyond this (or its sd beyond half) says so and counts"))
    runtime: RuntimeOptions = RuntimeOptions()
    curve_secret_key: Path | None = None
    curve_allowed_clients: Path | None = None
    preload: bool = True

    @field_validator("frames_address", "results_address")
    @classmethod
    def _bindable(cls, address: str) -> str:
        if not _ADDRESS.fullmatch(address):
            raise ValueError(f"{address!r} is not an address to bind: it must look like tcp://HOST:PORT, "
                             "e.g. tcp://127.0.0.1:5760")
        return address

    @field_validator("model_dirs")
    @classmethod
    def _repositories_are_folders(cls, model_dirs: tuple[Path, ...]) -> tuple[Path, ...]:
        """A repository folder may be missing (it is created when a model is trained there), but a
        file, a device or anything else that is not a folder is a mistake the server would not see."""
        for folder in model_dirs:
            if folder.exists() and not folder.is_dir():
                raise ValueError(f"{folder} is not a folder (--models takes a model repository's folder; "
                                 "a missing one is created when a model is trained)")
        return model_dirs

    @model_validator(mode="after")
    def _remote_needs_curve(self) -> ServerConfig:
        exposed = [a for a in (self.frames_address, self.results_address) if not is_loopback(a)]
        has_curve = self.curve_secret_key is not None and self.curve_allowed_clients is not None
        if exposed and not has_curve:
            raise ValueError(
                f"binding {exposed[0]} exposes the server beyond this machine: give CURVE keys "
                "(--curve-secret SERVER.key_secret and --allow CLIENT_KEYS_DIR; "
                "see `livescope keys generate`)")
        if (self.curve_secret_key is None) != (self.curve_allowed_clients is None):
            raise ValueError("CURVE needs both a server secret key and an allow-list folder")
        return self
