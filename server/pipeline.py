"""Whether a frame can go through the pipeline it names, checked before it is queued: each stage
takes what the one before gives, and a stage gets the frame metadata it needs."""

from __future__ import annotations

from livescope.protocol import ErrorCode, FrameHeader, ProtocolError
from livescope.psf_estimate import tile_px_of
from livescope.repository import ModelVersion


TABLE_TASKS = ("localise", "psf")  # tasks whose result is a table: nothing can follow them


def check_dz(header: FrameHeader, version: ModelVersion) -> None:
    """A refocus stage needs the frame's delta-z, within the range its model was trained for (it
    never saw more; refused before queueing, like the offline ``livescope refocus``)."""
    if header.dz_um is None:
        raise ProtocolError(ErrorCode.bad_header,
                            f"stage {version.ref} needs the frame's dz_um (µm to move the focus by: "
                            "the wanted plane's focus position minus the frame's)")
    low, high = version.card.refocus.dz_range_um
    if not low - 1e-9 <= header.dz_um <= high + 1e-9:
        raise ProtocolError(ErrorCode.bad_header,
                            f"dz_um {header.dz_um:+g} µm is outside the {low:+g} to {high:+g} µm "
                            f"{version.ref} was trained for")


def check_psf_optics(header: FrameHeader, version: ModelVersion) -> None:
    """A psf stage needs the frame's pixel size and objective (the network is told the optics: a
    blur of so many pixels is another defocus at another NA, wavelength or pixel size)."""
    missing = [name for name in ("pixel_size_um", "objective") if getattr(header, name) is None]
    if missing:
        raise ProtocolError(ErrorCode.bad_header, f"stage {version.ref} needs the frame's {' and '.join(missing)} "
                                                  "(NA, emission and immersion index; nm per pixel)")
    tile = tile_px_of(version.card)
    if min(header.shape) < tile:
        raise ProtocolError(ErrorCode.bad_header, f"stage {version.ref} reads {tile} px tiles; the frame is "
                                                  f"{header.shape[0]}x{header.shape[1]} px")


def check_pipeline(header: FrameHeader, stages: list[ModelVersion]) -> None:
    """Each stage takes what the one before gives; a localise stage (a table out) comes last
    and needs the frame's pixel size and camera calibration; so does a psf stage, which needs the
    frame's pixel size and objective; a refocus stage needs the frame's
    dz_um within the range its model was trained for. Raises ProtocolError."""
    dtype = header.dtype
    for i, version in enumerate(stages):
        if version.card.task == "refocus":
            check_dz(header, version)
            dtype = version.card.outputs[0].dtype  # it takes any pixel dtype: it converts itself
            continue
        if version.card.normalisation.kind == "photons":  # the server converts any dtype to photons
            dtype = "float32"
            continue
        if version.card.task in TABLE_TASKS:
            if i != len(stages) - 1:
                raise ProtocolError(ErrorCode.unknown_pipeline,
                                    f"{version.ref} gives a table, so it must be the pipeline's last stage")
            if version.card.task == "psf":
                check_psf_optics(header, version)
                return
            missing = [name for name in ("pixel_size_um", "camera") if getattr(header, name) is None]
            if missing:
                raise ProtocolError(ErrorCode.bad_header,
                                    f"stage {version.ref} needs the frame's {' and '.join(missing)} "
                                    "(photons and nm come from them)")
            return
        want = version.card.inputs[0].dtype
        # a float32 stage takes camera integers too: uint8 and uint16 convert to float32 exactly
        if want != dtype and not (want == "float32" and dtype in ("uint8", "uint16")):
            raise ProtocolError(ErrorCode.unknown_model, f"stage {version.ref} takes {want} but receives {dtype}")
        dtype = version.card.outputs[0].dtype
