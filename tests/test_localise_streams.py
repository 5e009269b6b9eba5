"""A live localise stream's render counts every frame once: a frame the server processes again (a
lossless resend whose result it no longer kept) answers its sender but does not add its
emitters to the running render a second time."""

from __future__ import annotations

import pytest

from livescope.emitters import EmitterTable
from livescope.protocol import CameraCalibration, FrameHeader
from livescope.server.localise_stage import LocaliseStreams, RenderSettings


def header(seq: int) -> FrameHeader:
    return FrameHeader(stream="smlm", seq=seq, shape=(32, 32), pipeline=("localise",), pixel_size_um=0.1,
                       camera=CameraCalibration(baseline_adu=100.0, e_per_adu=0.5))


def table(seq: int) -> EmitterTable:
    return EmitterTable.from_columns(frame=seq + 1, x_nm=[500.0, 1500.0], y_nm=[800.0, 2000.0],
                                     x_uncertainty_nm=10.0, y_uncertainty_nm=10.0)


def test_a_frame_processed_again_is_not_rendered_twice():
    streams = LocaliseStreams()
    for seq in range(3):
        streams.add(header(seq), table(seq), 100.0, "localise@1")
    streams.add(header(1), table(1), 100.0, "localise@1")  # seq 1 again
    info, _ = streams.render("smlm")
    assert info.frames == 3 and info.emitters == 6


def test_a_field_too_large_for_a_fine_running_render_is_rendered_coarser_and_finer_on_request_is_refused():
    big = FrameHeader(stream="wide", seq=0, shape=(512, 512), pipeline=("localise",), pixel_size_um=1.0,
                      camera=CameraCalibration(baseline_adu=100.0, e_per_adu=0.5))
    streams = LocaliseStreams()  # 20 nm by default: 25600 px square for this 512 µm field, 5 GB
    streams.add(big, table(0), 1000.0, "localise@1")
    info, image = streams.render("wide")
    assert info.pixel_nm == 89.0 and image.size <= 2**25
    with pytest.raises(ValueError, match="use render pixels of at least 45 nm"):
        streams.render("wide", RenderSettings(pixel_nm=10.0))
