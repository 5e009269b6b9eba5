"""A live localise stream's render counts every frame once: a frame the server processes again (a
lossless resend whose result it no longer kept) answers its sender but does not add its
emitters to the running render a second time."""

from __future__ import annotations

from livescope.emitters import EmitterTable
from livescope.protocol import CameraCalibration, FrameHeader
from livescope.server.localise_stage import LocaliseStreams


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
