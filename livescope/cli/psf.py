"""`livescope psf IN OUT.csv`: the local PSF (|defocus|, aberrations, uncertainties) per tile of every
frame of a stack, with a ``psf`` model of the repository (`livescope.server.offline_psf`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from livescope.cli.offline import InArg, _OfflineOpts, _model_help, _run_offline_job
from livescope.cli._common import default_models_dir


def psf(
    inp: InArg,
    out: Annotated[Path, typer.Argument(help="Output CSV: one row per tile (units in the column names).")],
    na: Annotated[Optional[float], typer.Option("--na", help="Numerical aperture of the objective (1.4).")] = None,
    emission: Annotated[Optional[float], typer.Option("--emission", help="Emission wavelength, nm (600).")] = None,
    immersion: Annotated[Optional[float], typer.Option(
        "--immersion", help="Immersion refractive index (1.515).")] = None,
    pixel_size: Annotated[Optional[float], typer.Option(
        "--pixel-size", help="Pixel size at the sample, nm (default: from the stack's metadata).")] = None,
    tile: Annotated[Optional[int], typer.Option(help="Tile side, px (default: the model's, 64).")] = None,
    astigmatism_sign: Annotated[int, typer.Option(
        "--astigmatism-sign", help="Sign of the rig's astigmatism (1 or -1): signs the defocus where the model is "
                                   "sure of it.")] = 1,
    model: Annotated[Optional[str], typer.Option(help=_model_help("psf"))] = None,
    models: Optional[Path] = _OfflineOpts["models"], overwrite: bool = _OfflineOpts["overwrite"],
    provider: Optional[str] = _OfflineOpts["provider"],
) -> None:
    """Local defocus and aberrations per tile of each frame (the seed's PSF estimation network), as CSV
    with a provenance sidecar."""
    from livescope.cli._console import console
    from livescope.server.offline_psf import run_psf_offline

    optics = {"--na": (na, 1.4), "--emission": (emission, 600.0), "--immersion": (immersion, 1.515)}  # (given, default)
    assumed = [f"{flag} {default:g}" for flag, (given, default) in optics.items() if given is None]
    na, emission, immersion = (default if given is None else given for given, default in optics.values())
    _run_offline_job("psf", lambda progress: run_psf_offline(
        inp, out, na=na, emission_nm=emission, immersion_index=immersion, pixel_size_nm=pixel_size, tile_px=tile,
        astigmatism_sign=astigmatism_sign, model=model or "psf", model_dirs=[models or default_models_dir()],
        overwrite=overwrite, provider=provider, progress=progress))
    if assumed:  # the estimate depends on the optics: never assumed silently
        console.print(f"[yellow]warning:[/] optics not given, assumed {', '.join(assumed)}: give your objective's")
