"""`livescope models export NAME@V OUT.zip`: a model version as a bioimage.io package, validated,
for the community's tools (`livescope.models.bioimage`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from livescope.cli._common import ModelsOpt, default_models_dir, fail


def models_export(
    model: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (default: the version served by default).")],
    out: Annotated[Path, typer.Argument(help="The package to write, .zip.")],
    models: ModelsOpt = None,
    baseline: Annotated[Optional[float], typer.Option(
        help="A camera-agnostic model's package takes this camera's ADU (baseline, ADU) instead of photo-electrons; "
             "with --e-per-adu.")] = None,
    e_per_adu: Annotated[Optional[float], typer.Option("--e-per-adu", help="With --baseline: e-/ADU.")] = None,
    sample: Annotated[Optional[Path], typer.Option(
        help="A stack whose first frame is the package's test input (default: a synthetic frame).")] = None,
    author: Annotated[Optional[list[str]], typer.Option(help="An author of the model (repeat for several).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing package.")] = False,
) -> None:
    """Export a model version as a bioimage.io package (ONNX weights, test input and output, cover,
    README and the livescope card), validated with bioimageio.spec."""
    from livescope.models.bioimage import ExportCamera, ExportError, export_bioimage
    from livescope.protocol import split_stage
    from livescope.repository import ModelRepository, UnknownModelError, shipped_models_root
    from livescope.stackio import StackError, read_stack

    if (baseline is None) != (e_per_adu is None):
        fail("give --baseline and --e-per-adu together (the camera the package converts with), or neither")
    try:
        camera = None if baseline is None else ExportCamera(baseline_adu=baseline, e_per_adu=e_per_adu)
    except ValueError:
        fail("--baseline must not be negative and --e-per-adu must be positive")
    try:
        name, number = split_stage(model)
        version = ModelRepository([shipped_models_root(), models or default_models_dir()]).resolve(name, number)
        frame = read_stack(sample).frames[0] if sample is not None else None
        written = export_bioimage(version, out, camera=camera, sample=frame, authors=tuple(author or ("livescope",)),
                                  overwrite=overwrite)
    except (ValueError, UnknownModelError, StackError, ExportError) as e:
        fail(str(e))
    typer.echo(f"{version.ref} -> {written} (bioimage.io package, validated; "
               f"{written.stat().st_size / 1e6:.1f} MB)")


def models_import(
    package: Annotated[Path, typer.Argument(help="A bioimage.io model package (.zip) or its rdf.yaml.")],
    models: ModelsOpt = None,
    name: Annotated[Optional[str], typer.Option(help="The model's name here (default: from the package's).")] = None,
    task: Annotated[str, typer.Option(help="What it serves as: denoise or restore.")] = "denoise",
) -> None:
    """Import a bioimage.io model package (ONNX or TorchScript weights; its pre- and postprocessing
    built into the graph) as a new version in your repository, served after `models activate --force`."""
    from livescope.cli._common import user_repository
    from livescope.models.bioimage_import import ImportFailed, import_bioimage

    if not package.exists():
        fail(f"{package}: no such file")
    if name is not None and not name.replace("-", "").replace("_", "").isalnum():
        fail(f"--name {name}: use letters, digits, '-' and '_'")
    try:
        folder, card = import_bioimage(package, user_repository(models), name=name, task=task)
    except ImportFailed as e:
        fail(str(e))
    typer.echo(f"{package} -> {card.ref} in {folder.parent.parent} (a candidate: {card.gate.reason}; "
               f"with --models {folder.parent.parent} for the server)".replace("NAME@V", card.ref))
