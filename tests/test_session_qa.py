"""The session QA report (`livescope.acquire.calibration.qa`) of registered virtual-microscope pairs."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from livescope.acquire.calibration.qa import OVERVIEW_FILE, REPORT_FILE, write_qa_report
from livescope.acquire.calibration.registration import RegistrationError, RegistrationReport, register_pairs
from livescope.acquire.microscope import VirtualMicroscope
from livescope.acquire.virtual import VirtualRigConfig

SIZE_PX = 96


class Pair:
    def __init__(self, position, repeat, low, high):
        self.position, self.repeat, self.low_adu, self.high_adu = position, repeat, low, high


@pytest.fixture(scope="module")
def pairs() -> list[Pair]:
    """Two pairs with filaments, one of an empty field (fails QA)."""
    core = VirtualMicroscope(VirtualRigConfig(sensor_shape_px=(SIZE_PX, SIZE_PX), signal_photons_per_ms=10.0))
    out = []
    for position, x_um in enumerate([120.0, 150.0, 0.0]):
        core.setXYPosition(x_um, 0.0)
        images = []
        for preset in ("Confocal", "STED"):
            core.setConfig("Modality", preset)
            core.snapImage()
            images.append(core.getImage())
        out.append(Pair(position, 0, *images))
    return out


def test_the_report_shows_every_pair_with_its_thumbnails_figures_and_verdict(pairs, tmp_path):
    report = register_pairs(pairs, session_id="s1")
    assert [p.passed for p in report.pairs] == [True, True, False]
    html_file = write_qa_report(pairs, report, tmp_path / "qa", title="virtual session", baseline_adu=100.0)
    assert html_file == tmp_path / "qa" / REPORT_FILE
    page = html_file.read_text()
    assert "<h1>virtual session</h1>" in page and "2 of 3 pairs pass QA" in page
    assert "position 2 repeat 0: the low image is empty" in page  # the summary names the failure
    assert page.count("<svg") == 1 and page.count('class="pass"') == 2 and page.count('class="fail"') == 1
    for p in pairs:
        png = tmp_path / "qa" / f"pair_{p.position:03d}_00.png"
        assert f'src="{png.name}"' in page
        thumbs = iio.imread(png)
        assert thumbs.dtype == np.uint8 and thumbs.shape == (SIZE_PX, 3 * SIZE_PX + 2 * 4)
    reg = report.pairs[0]
    assert f"{reg.shift_px[0]:+.2f}, {reg.shift_px[1]:+.2f}" in page and f"{reg.ncc_after:.3f}" in page
    overview = iio.imread(tmp_path / "qa" / OVERVIEW_FILE)
    assert overview.ndim == 3 and overview.shape[2] == 3 and overview.shape[0] > SIZE_PX
    assert f'src="{OVERVIEW_FILE}"' in page


def test_writing_again_replaces_the_folder_whole_and_leaves_no_temporary_files(pairs, tmp_path):
    report = register_pairs(pairs[:1])
    write_qa_report(pairs, register_pairs(pairs), tmp_path / "qa")
    write_qa_report(pairs[:1], report, tmp_path / "qa")
    assert sorted(f.name for f in (tmp_path / "qa").iterdir()) == ["pair_000_00.png", OVERVIEW_FILE, REPORT_FILE]
    assert [f.name for f in tmp_path.iterdir()] == ["qa"]


def test_a_pair_the_registration_does_not_cover_is_a_clear_error_and_nothing_is_written(pairs, tmp_path):
    with pytest.raises(RegistrationError, match="position 1 repeat 0 is not in the registration report"):
        write_qa_report(pairs[:2], RegistrationReport(pairs=register_pairs(pairs[:1]).pairs), tmp_path / "qa")
    assert list(tmp_path.iterdir()) == []


def test_a_report_of_one_registered_pair_is_complete(pairs, tmp_path):
    html_file = write_qa_report(pairs[:1], register_pairs(pairs[:1]), tmp_path / "qa")
    assert html_file.name == REPORT_FILE and (tmp_path / "qa" / OVERVIEW_FILE).is_file()
