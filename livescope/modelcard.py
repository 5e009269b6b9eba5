"""The model card: what a model version is, what it expects, and where it came from.

Each model version is a folder ``<repository>/<name>/<version>/`` holding ``model.onnx`` and
``card.yaml``. The card is checked against the ONNX graph before the server loads it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

Task = Literal["denoise", "refocus", "localise", "restore", "identity", "psf"]
TensorDtype = Literal["uint8", "uint16", "float32"]

CARD_FILE = "card.yaml"
MODEL_FILE = "model.onnx"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(_Frozen):
    name: str
    dtype: TensorDtype
    axes: str = Field(description="one letter per dimension, e.g. 'NCYX'")


class Normalisation(_Frozen):
    """How camera ADU become network units. ``in_graph``: the ONNX graph does it itself (the
    constants are recorded here for people; the server does not apply them). ``photons``: the
    graph takes and gives noise-equivalent photo-electrons (variance = mean); the server and the
    offline commands convert each frame with its camera (given, or estimated from the data) and the
    result back to ADU, so one model serves any camera.

    ``transform`` 'linear': d / scale with d = ADU - offset_adu; 'sqrt': sign(d) (sqrt(|d| + 1) - 1)
    / scale; and back, plus ``bias_adu`` (see ``livescope.models.intensity``)."""

    kind: Literal["in_graph", "none", "photons"] = "in_graph"
    transform: Literal["linear", "sqrt"] = "linear"
    offset_adu: float = 0.0
    scale: float = Field(default=1.0, gt=0, validation_alias=AliasChoices("scale", "scale_adu"))
    bias_adu: float = 0.0


class Tiling(_Frozen):
    """How a frame may be cut for the network."""

    size_multiple_px: int = Field(default=1, ge=1, description="H and W must be multiples")
    halo_px: int = Field(default=0, ge=0, description="receptive-field margin for tiling")
    tile_px: int | None = Field(default=None, description="fixed tile size, None = any size")


class TrainedFor(_Frozen):
    """The operating range the training data covered (None = not constrained)."""

    pixel_size_nm: tuple[float, float] | None = None
    na: tuple[float, float] | None = None
    emission_nm: tuple[float, float] | None = None
    peak_photons: tuple[float, float] | None = None
    modalities: tuple[str, ...] = ()
    emitter_photons: tuple[float, float] | None = Field(default=None, description="localise: per emitter")
    background_photons_per_px: tuple[float, float] | None = None
    density_per_um2: tuple[float, float] | None = None
    psf_sigma_px: tuple[float, float] | None = None


class LocaliseSpec(_Frozen):
    """What a localisation model needs and gives beyond its tensors (see livescope/localise_maps.py).

    Its input is ``context_frames`` consecutive frames in photo-electrons ("photons" as ThunderSTORM
    counts them: camera counts minus the baseline, times e-/ADU, divided by the EM gain); it
    localises the last one. Its output is the
    maps of ``livescope.emitters.LOCALISE_MAP_CHANNELS``."""

    context_frames: int = Field(ge=1)
    psf: Literal["gaussian", "airy", "astigmatic"]
    three_d: bool = False
    z_range_nm: tuple[float, float] | None = None
    threshold: float = Field(default=0.6, gt=0, le=1, description="integrated p to accept an emitter")
    candidate_p: float = Field(default=0.1, ge=0, lt=1, description="a local maximum of p must exceed this")


class DenoiseSpec(_Frozen):
    """A denoiser that sees the frames before the one it restores: its input is ``context_frames``
    consecutive frames of a stream (N, context_frames, H, W), oldest first, and it restores the
    last. Causal, so a live frame's result never waits for the next frame; a frame without all its
    predecessors (a stream's start, dropped frames) has them replaced by the nearest frame after
    them, as the localise stage does. A card without this section is a single-frame denoiser."""

    context_frames: int = Field(ge=1, le=9)


class RefocusSpec(_Frozen):
    """What a refocusing model needs beyond its tensors (see models/refocus/net.py).

    Its input is [N, 2, H, W] float32: the camera frame in ADU (baseline included) and a map of
    delta-z, the wanted plane's focus position minus the frame's, in µm (uniform for a plane,
    varying for a tilted or curved surface). Its output is the image at that plane, in ADU.
    Delta-z outside ``dz_range_um`` is refused: the model never saw it."""

    dz_range_um: tuple[float, float]
    z_step_um: float = Field(gt=0, description="plane spacing of the training stacks")
    spherical_waves: float | None = Field(default=None, description="the optics' primary spherical "
                                          "aberration, waves rms, when known (virtual microscope)")

    @model_validator(mode="after")
    def _ordered(self) -> RefocusSpec:
        low, high = self.dz_range_um
        if not low <= 0 <= high:
            raise ValueError(f"dz_range_um must contain 0, got {self.dz_range_um}")
        return self


class Provenance(_Frozen):
    command: str
    code_version: str
    data: str = Field(description="what the training data was")
    data_hash: str = ""
    seed: int | None = None
    trained_at: datetime | None = None
    train_seconds: float | None = None
    session_ids: tuple[str, ...] = Field(default=(), description="calibration sessions it was trained on")


class Comparison(_Frozen):
    """The version that was active when this one was trained, scored on THIS version's held-out
    data with the same metric (cards' own metrics come from different held-out data and are not
    comparable): the evidence the deploy gate activates a new version on."""

    against: str = Field(description="name@version active at training time")
    metric: str
    higher_is_better: bool
    new_value: float
    active_value: float

    @property
    def not_worse(self) -> bool:
        if self.higher_is_better:
            return self.new_value >= self.active_value
        return self.new_value <= self.active_value

    def summary(self) -> str:
        verdict = "not worse than" if self.not_worse else "worse than"
        return (f"{self.metric} {self.new_value:.4g} vs {self.active_value:.4g} of {self.against} on the same "
                f"held-out data: {verdict} it")


class QualityGate(_Frozen):
    """Whether this version may be served by default, decided when it was written: its held-out
    score must beat the strongest classical method's on the same held-out data, and must not be
    worse than the version that was the default then (``comparison``). A version that fails is
    kept as a candidate: served only when named in `models activate NAME@V --force`."""

    passed: bool
    metric: str
    higher_is_better: bool
    new_value: float
    classical_method: str | None = Field(description="None: no classical method was scored")
    classical_value: float | None = None
    reason: str = Field(description="one line: why it passed or failed")


class ModelCard(_Frozen):
    schema_version: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    version: int = Field(ge=1)
    task: Task
    description: str = ""
    inputs: tuple[TensorSpec, ...] = Field(min_length=1)
    outputs: tuple[TensorSpec, ...] = Field(min_length=1)
    normalisation: Normalisation = Normalisation()
    tiling: Tiling = Tiling()
    trained_for: TrainedFor = TrainedFor()
    provenance: Provenance
    metrics: dict[str, float] = Field(default_factory=dict, description="held-out metrics")
    localise: LocaliseSpec | None = Field(default=None, description="task 'localise' only")
    refocus: RefocusSpec | None = Field(default=None, description="task 'refocus' only")
    # Optional (a single-frame denoiser has none), so cards from before it read as they were.
    denoise: DenoiseSpec | None = Field(default=None, exclude_if=lambda v: v is None,
                                        description="task 'denoise' only: a denoiser with context frames")
    comparison: Comparison | None = Field(default=None, description="against the version active at training")
    gate: QualityGate | None = Field(default=None, description="None: written before the gate existed")
    licence: str = "BSD-3-Clause"

    @model_validator(mode="after")
    def _task_sections_with_their_task(self) -> ModelCard:
        for task in ("localise", "refocus"):
            if (self.task == task) != (getattr(self, task) is not None):
                raise ValueError(f"a '{task}' model's card needs a '{task}' section, and only it has one")
        if self.denoise is not None and self.task != "denoise":
            raise ValueError("only a 'denoise' model's card has a 'denoise' section")
        return self

    @property
    def context_frames(self) -> int:
        """Consecutive frames of a stream the model sees per input (the last is the one it answers)."""
        spec = self.localise or self.denoise
        return spec.context_frames if spec is not None else 1

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def serves_by_default(self) -> bool:
        """Whether `serve` and the offline commands may pick this version without being told to:
        it passed the quality gate. A card written before the gate existed (the shipped models
        so far) has none and is served as it was."""
        return self.gate is None or self.gate.passed

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        with open(path, encoding="utf-8") as f:
            return cls.model_validate(yaml.safe_load(f))

    def dump(self, path: Path) -> None:
        text = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        path.write_text(text, encoding="utf-8")
