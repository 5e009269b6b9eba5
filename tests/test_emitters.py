"""The emitter table: one type for ground truth, localisations, the wire and the CSV."""

from __future__ import annotations

import numpy as np
import pytest

from livescope.emitters import EMITTER_DTYPE, EMITTER_FIELDS, EmitterTable, EmitterTableError
from livescope.protocol import table_dtype


def table() -> EmitterTable:
    return EmitterTable.from_columns(
        frame=np.array([1, 1, 3]), x_nm=np.array([50.0, 149.25, 3.5]), y_nm=np.array([50.0, 10.0, 7.0]),
        photons=np.array([1000.0, 2500.0, 300.0]), background_photons=20.0,
        x_uncertainty_nm=np.array([3.0, 4.0, 5.0]), y_uncertainty_nm=np.array([4.0, 4.0, 5.0]))


def test_the_table_is_the_wire_protocols_table_payload():
    assert EMITTER_DTYPE == table_dtype(EMITTER_FIELDS)
    t = table()
    payload = np.frombuffer(t.rows.tobytes(), dtype=EMITTER_DTYPE)
    assert np.array_equal(EmitterTable.from_payload(payload).rows, t.rows)


def test_fields_not_given_are_zero_and_the_probability_of_a_ground_truth_is_one():
    t = EmitterTable.from_columns(frame=1, x_nm=np.array([1.0, 2.0]), y_nm=0.0)
    assert len(t) == 2 and (t["probability"] == 1).all() and (t["z_nm"] == 0).all()
    with pytest.raises(EmitterTableError, match="unknown emitter fields: colour"):
        EmitterTable.from_columns(frame=1, x_nm=1.0, y_nm=1.0, colour=3)


def test_the_csv_is_thunderstorms_and_reads_back(tmp_path):
    t = table()
    t.write_csv(tmp_path / "locs.csv")
    lines = (tmp_path / "locs.csv").read_text().splitlines()
    assert lines[0] == ('"id","frame","x [nm]","y [nm]","z [nm]","sigma [nm]","intensity [photon]",'
                        '"offset [photon]","bkgstd [photon]","uncertainty [nm]"')
    assert lines[1].split(",")[:4] == ["1", "1", "50.0", "50.0"]
    assert float(lines[1].split(",")[-1]) == pytest.approx(np.sqrt((9 + 16) / 2), abs=1e-3)
    assert float(lines[1].split(",")[-2]) == pytest.approx(np.sqrt(20.0), abs=1e-3)  # bkgstd
    back = EmitterTable.read_csv(tmp_path / "locs.csv")
    for field in ("frame", "x_nm", "y_nm", "photons", "background_photons"):
        np.testing.assert_allclose(back[field], t[field], atol=1e-3)


def test_an_existing_csv_is_not_overwritten_without_being_asked(tmp_path):
    (tmp_path / "locs.csv").write_text("precious")
    with pytest.raises(FileExistsError):
        table().write_csv(tmp_path / "locs.csv")
    assert (tmp_path / "locs.csv").read_text() == "precious"
    table().write_csv(tmp_path / "locs.csv", overwrite=True)
    assert len(EmitterTable.read_csv(tmp_path / "locs.csv")) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["locs.csv"]  # no temporary file left


def test_a_csv_without_coordinates_is_refused_by_name(tmp_path):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(EmitterTableError, match=r"no 'frame', 'x \[nm\]', 'y \[nm\]' column"):
        EmitterTable.read_csv(tmp_path / "other.csv")


def test_frames_select_and_renumber():
    t = table()
    assert len(t.in_frame(1)) == 2 and len(t.in_frame(2)) == 0
    assert (t.in_frame(3).with_frame(7)["frame"] == 7).all()
    assert len(EmitterTable.concatenate([t, t.in_frame(3)])) == 4 and len(EmitterTable.concatenate([])) == 0
