"""livescope models as bioimage.io model packages, so that the community's tools (bioimageio.core,
deepImageJ, ilastik, the model zoo) run them: `livescope models export NAME@V out.zip`.

A package holds the version's ONNX file as its weights, a description in the current spec (0.5)
derived from the card, a test input and the output the model gives for it (run here with ONNX
Runtime), a cover image (input beside output), a README from the card, and as attachments the card
itself (provenance, metrics, quality gate) and the training's figures where it has them. The package
is validated with bioimageio.spec before it is written, atomically.

Units. The graph of a camera-agnostic model (normalisation ``photons``) takes noise-equivalent
photo-electrons, which livescope converts each frame to with the frame's camera. A bioimage.io
consumer knows no camera, so the package says its input is photo-electrons, or, given the camera
(``camera``), takes ADU and converts with ``scale_linear`` before and after the model. Any other
model takes what livescope gives it (ADU; its graph normalises).

Only image-to-image models (one image in, one image out: denoise, restore) are exported: a
localisation model's maps and a refocusing model's defocus input mean nothing to other tools.
Needs the ``bioimage`` extra (bioimageio.core, which brings bioimageio.spec and imageio).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field

from livescope.modelcard import ModelCard
from livescope.png import grey_png, stretched
from livescope.repository import ModelVersion

if TYPE_CHECKING:
    import onnx

EXPORTABLE_TASKS = ("denoise", "restore")
SAMPLE_PX = 256
CARD_ATTACHMENT = "livescope-card.yaml"
TRAINING_FIGURES = ("training.svg", "held_out.png")  # written next to the card by livescope's training
# What the architecture and training methods are cited by (every livescope image model is a U-Net)
UNET = ("Ronneberger, Fischer, Brox. U-Net: Convolutional networks for biomedical image segmentation. "
        "MICCAI 2015.", "10.1007/978-3-319-24574-4_28")
METHODS = {"noise2void": ("Krull, Buchholz, Jug. Noise2Void - learning denoising from single noisy images. "
                          "CVPR 2019.", "10.1109/CVPR.2019.00223"),
           "noise2noise": ("Lehtinen et al. Noise2Noise: learning image restoration without clean data. "
                           "ICML 2018.", "10.48550/arXiv.1803.04189")}


class ExportError(ValueError):
    """The model cannot be exported as asked; the message says why, in one line."""


class ExportCamera(BaseModel):
    """The camera a camera-agnostic model's package converts its ADU input with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    baseline_adu: float = Field(ge=0)
    e_per_adu: float = Field(gt=0)


def sample_frame(card: ModelCard, camera: ExportCamera | None, seed: int = 0) -> np.ndarray:
    """A test input (1, 1, SAMPLE_PX, SAMPLE_PX) in the model's input units and dtype: puncta and
    filaments blurred by a 1.5 px PSF, 5-60 photons, with Poisson noise."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    structure = np.zeros((SAMPLE_PX, SAMPLE_PX), np.float32)
    structure[tuple(rng.integers(0, SAMPLE_PX, (2, 150)))] = 1.0  # puncta
    for _ in range(12):  # filaments: random walks
        y, x, angle = *rng.uniform(0, SAMPLE_PX, 2), rng.uniform(0, 2 * np.pi)
        for _ in range(300):
            angle += rng.normal(0, 0.1)
            y, x = (y + np.sin(angle)) % SAMPLE_PX, (x + np.cos(angle)) % SAMPLE_PX
            structure[int(y), int(x)] = 0.5
    blurred = ndimage.gaussian_filter(structure, 1.5)
    photons = rng.poisson(5.0 + 55.0 * blurred / blurred.max()).astype(np.float32)
    dtype = np.dtype(card.inputs[0].dtype)
    if card.normalisation.kind == "photons":
        frame = photons if camera is None else photons / camera.e_per_adu + camera.baseline_adu
    else:  # the model takes ADU: the baseline it was trained for, 1 e-/ADU
        frame = photons + card.normalisation.offset_adu
    if np.issubdtype(dtype, np.integer):
        frame = np.clip(np.round(frame), 0, np.iinfo(dtype).max)
    return frame.astype(dtype)[None, None]


def _run(version: ModelVersion, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(version.onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _citations(card: ModelCard) -> list[tuple[str, str]]:
    text = f"{card.description} {card.provenance.command}".lower().replace("-", "")
    cited = [UNET]
    if "n2v" in text or "noise2void" in text or "blindspot" in text or "blind spot" in text:
        cited.append(METHODS["noise2void"])
    if "noise2noise" in text or "neighbouring frames" in text:
        cited.append(METHODS["noise2noise"])
    return cited


def _units(card: ModelCard, camera: ExportCamera | None) -> str:
    """What the package's input and output are, in words."""
    if camera is not None:
        return (f"ADU of a camera with a baseline of {camera.baseline_adu:g} ADU and {camera.e_per_adu:g} e-/ADU "
                "(converted to photo-electrons before the model and back after it)")
    if card.normalisation.kind == "photons":
        return "noise-equivalent photo-electrons: (ADU - baseline) x e-/ADU, so that variance equals mean"
    return "camera ADU, baseline included (the graph normalises)"


def _readme(card: ModelCard, camera: ExportCamera | None) -> str:
    lines = [f"# {card.ref}: {card.task}", "", card.description, "",
             f"**Input and output:** {_units(card, camera)}.", "",
             f"**Trained by:** `{card.provenance.command}` (livescope {card.provenance.code_version}); "
             f"data: {card.provenance.data}", ""]
    if card.gate is not None:
        lines += [f"**Quality gate:** {card.gate.reason}.", ""]
    if card.metrics:
        lines += ["| held-out metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:g} |" for k, v in card.metrics.items()]
        lines.append("")
    lines += ["Exported from livescope; the original model card travels with the package as "
              f"`{CARD_ATTACHMENT}`."]
    return "\n".join(lines) + "\n"


def _cover(x: np.ndarray, y: np.ndarray, path: Path) -> None:
    """Input beside output (2:1), each stretched to its 1-99.5 percentiles, grey PNG."""
    path.write_bytes(grey_png(np.hstack([stretched(x[0, 0], 1.0, 99.5), stretched(y[0, 0], 1.0, 99.5)])))


def export_bioimage(version: ModelVersion, out: Path, *, camera: ExportCamera | None = None,
                    sample: np.ndarray | None = None, authors: tuple[str, ...] = ("livescope",),
                    overwrite: bool = False) -> Path:
    """Write ``version`` as a bioimage.io package (.zip) at ``out``, validated; ``sample`` (a frame
    in the model's input units, at least the smallest size the model takes) replaces the synthetic
    test input. Raises ExportError with a one-line reason."""
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bio

    card = version.card
    if card.task not in EXPORTABLE_TASKS or len(card.inputs) != 1 or len(card.outputs) != 1:
        raise ExportError(f"{card.ref} is a {card.task} model; only image-to-image models "
                          f"({', '.join(EXPORTABLE_TASKS)}) export to bioimage.io")
    if camera is not None and card.normalisation.kind != "photons":
        raise ExportError(f"{card.ref} takes ADU already (its graph normalises): a camera applies only to a "
                          "camera-agnostic model")
    if out.suffix.lower() != ".zip":
        raise ExportError(f"{out}: a bioimage.io package is a .zip file; name it so")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; choose another output or allow overwriting")
    step = card.tiling.size_multiple_px
    halo = card.tiling.halo_px
    smallest = max(step, math.ceil((2 * halo + step) / step) * step)
    x = sample_frame(card, camera) if sample is None else _as_input(sample, card, smallest)
    pre: list = []
    post: list = []
    if camera is None:
        model_input, expected = x, _run(version, x).astype(np.float32)
    else:  # the package takes and gives ADU, converted before and after the model; the graph, photo-electrons
        model_input = x.astype(np.float32)
        photons = ((model_input - camera.baseline_adu) * camera.e_per_adu).astype(np.float32)
        expected = _run(version, photons) / camera.e_per_adu + camera.baseline_adu
        pre = [bio.ScaleLinearDescr(kwargs=bio.ScaleLinearKwargs(
            gain=camera.e_per_adu, offset=-camera.baseline_adu * camera.e_per_adu))]
        post = [bio.ScaleLinearDescr(kwargs=bio.ScaleLinearKwargs(gain=1.0 / camera.e_per_adu,
                                                                   offset=camera.baseline_adu))]

    in_id, out_id = bio.TensorId("raw"), bio.TensorId("restored")
    space_in = [bio.SpaceInputAxis(id=bio.AxisId(a), size=bio.ParameterizedSize(min=smallest, step=step))
                for a in "yx"]

    def same_as_input(a: str):
        return bio.SizeReference(tensor_id=in_id, axis_id=bio.AxisId(a))

    space_out = [bio.SpaceOutputAxisWithHalo(id=bio.AxisId(a), halo=halo, size=same_as_input(a)) if halo
                 else bio.SpaceOutputAxis(id=bio.AxisId(a), size=same_as_input(a)) for a in "yx"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        np.save(folder / "test_input.npy", model_input)
        np.save(folder / "test_output.npy", expected.astype(np.float32))
        _cover(model_input, expected, folder / "cover.png")
        (folder / "README.md").write_text(_readme(card, camera))
        shutil.copy(version.folder / "card.yaml", folder / CARD_ATTACHMENT)
        figures = [f for f in TRAINING_FIGURES if (version.folder / f).is_file()]  # a version trained here
        for name in figures:
            shutil.copy(version.folder / name, folder / name)
        shutil.copy(version.onnx_path, folder / "model.onnx")
        opset = default_opset(version.onnx_path)
        dtype = np.dtype(model_input.dtype).name
        model = bio.ModelDescr(
            name=f"livescope {card.name} v{card.version}"[:128], description=card.description[:1024],
            authors=[bio.Author(name=a) for a in authors],
            cite=[bio.CiteEntry(text=text, doi=bio.Doi(doi)) for text, doi in _citations(card)],
            license=bio.LicenseId(card.licence), documentation=bio.FileDescr(source=folder / "README.md"),
            covers=[bio.FileDescr(source=folder / "cover.png")],
            attachments=[bio.FileDescr(source=folder / f) for f in (CARD_ATTACHMENT, *figures)],
            tags=["livescope", card.task, "fluorescence-light-microscopy", "2d", "onnx"],
            version=f"{card.version}.0.0",
            inputs=[bio.InputTensorDescr(
                id=in_id, description=_units(card, camera),
                axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier("raw")]), *space_in],
                test_tensor=bio.FileDescr(source=folder / "test_input.npy"),
                data=bio.IntervalOrRatioDataDescr(type=dtype), preprocessing=pre)],
            outputs=[bio.OutputTensorDescr(
                id=out_id, axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier("restored")]),
                                 *space_out],
                test_tensor=bio.FileDescr(source=folder / "test_output.npy"),
                data=bio.IntervalOrRatioDataDescr(type="float32"), postprocessing=post)],
            weights=bio.WeightsDescr(onnx=bio.OnnxWeightsDescr(source=folder / "model.onnx", opset_version=opset)),
        )
        tmp_out = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}.zip")
        try:
            save_bioimageio_package(model, output_path=tmp_out)
            os.replace(tmp_out, out)
        finally:
            tmp_out.unlink(missing_ok=True)
    return out


def _as_input(sample: np.ndarray, card: ModelCard, smallest: int) -> np.ndarray:
    frame = np.asarray(sample)
    if frame.ndim != 2:
        raise ExportError(f"the sample must be one frame (Y, X), not shape {frame.shape}")
    h, w = (min(n, SAMPLE_PX) // card.tiling.size_multiple_px * card.tiling.size_multiple_px for n in frame.shape)
    if min(h, w) < smallest:
        raise ExportError(f"the sample frame {frame.shape[0]}x{frame.shape[1]} is smaller than the {smallest} px "
                          "the model needs")
    return frame[:h, :w].astype(card.inputs[0].dtype)[None, None]


def default_opset(model: Path | onnx.ModelProto) -> int | None:
    """The version of the default (ai.onnx) operator set a graph (or a graph file) uses."""
    import onnx

    if isinstance(model, Path):
        model = onnx.load(str(model), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
