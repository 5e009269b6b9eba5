"""A live localise stream's render counts every frame once: a frame the server processes again (a
lossless resend whose result it no longer kept) answers its sender but does not add its
emitters to the running render a second time."""

from __future__ import annotations

import pytest

from livescope.emitters import EmitterTable
from livescope.protocol import CameraCalibration, FrameHeader
from livescope.server.localise_stage import LocaliseStreams, RenderSettings


def header(seq: int, side_px: int = 32) -> FrameHeader:
    return FrameHeader(stream="smlm", seq=seq, shape=(side_px, side_px), pipeline=("localise",), pixel_size_um=0.1,
                       camera=CameraCalibration(baseline_adu=100.0, e_per_adu=0.5))


def table(seq: int) -> EmitterTable:
    return EmitterTable.from_columns(frame=seq + 1, x_nm=[500.0, 1500.0], y_nm=[800.0, 2000.0],
                                     x_uncertainty_nm=10.0, y_uncertainty_nm=10.0)


def test_a_frame_processed_again_is_not_rendered_twice():
    streams = LocaliseStreams()
    for seq in range(3):
        streams.add(header(seq), table(seq), 100.0, "localise@1")
    streams.add(header(1), table(1), 100.0, "localise@1")  # seq 1 again
    info, _, _ = streams.render("smlm")
    assert info.frames == 3 and info.emitters == 6


def test_a_field_too_large_for_a_fine_running_render_is_rendered_coarser_and_finer_on_request_is_refused():
    big = FrameHeader(stream="wide", seq=0, shape=(512, 512), pipeline=("localise",), pixel_size_um=1.0,
                      camera=CameraCalibration(baseline_adu=100.0, e_per_adu=0.5))
    streams = LocaliseStreams()  # 20 nm by default: 25600 px square for this 512 µm field, 5 GB
    streams.add(big, table(0), 1000.0, "localise@1")
    info, image, _ = streams.render("wide")
    assert info.pixel_nm == 89.0 and image.size <= 2**25
    with pytest.raises(ValueError, match="use render pixels of at least 45 nm"):
        streams.render("wide", RenderSettings(pixel_nm=10.0))


def test_the_render_reply_says_the_streams_frc_resolution_drift_and_density():
    """400 frames of 3000 molecules blinking (1% on) in a 6.4 µm field, drifting 40 nm along x."""
    import numpy as np

    rng = np.random.default_rng(0)
    sites = rng.uniform(0, 6400, (3000, 2))
    streams = LocaliseStreams()
    for seq in range(400):
        on = sites[rng.random(len(sites)) < 0.01]
        xy = on + rng.normal(0, 10.0, on.shape) + [40.0 * seq / 399, 0.0]
        frame = EmitterTable.from_columns(frame=seq + 1, x_nm=xy[:, 0], y_nm=xy[:, 1], x_uncertainty_nm=10.0,
                                          y_uncertainty_nm=10.0)
        streams.add(header(seq, 64), frame, 100.0, "localise@1")
    info, image, curve = streams.render("smlm")
    q = info.smlm
    assert q is not None and q.frames == 400 and q.emitters == info.emitters + info.emitters_outside
    assert q.drift_corrected and q.drift_nm[0] == pytest.approx(40.0, abs=10.0)
    assert 10.0 < q.frc_resolution_nm < 80.0
    assert q.density_per_um2 == pytest.approx(30 / 6.4**2, rel=0.2)
    assert streams.render("smlm", quality=False)[0].smlm is None
    # the render is of the corrected emitters: sharper than the running render, which the drift smears
    uncorrected = streams.render("smlm", quality=False)[1]
    assert curve is not None and curve.resolution_nm == q.frc_resolution_nm
    assert image.sum() == pytest.approx(uncorrected.sum(), rel=0.05)
    assert (image**2).sum() > 1.1 * (uncorrected**2).sum()  # the same light, more concentrated
