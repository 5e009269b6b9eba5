"""The emitter table: one type for ground truth, localisations, the wire and the CSV."""

from __future__ import annotations

import numpy as np
import pytest

from livescope.emitters import EMITTER_DTYPE, EMITTER_FIELDS, EmitterTable, EmitterTableError, csv_columns
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


def header(path) -> list[str]:
    return [name.strip('"') for name in path.read_text().splitlines()[0].split(",")]


def test_the_csv_is_thunderstorms_and_reads_back(tmp_path):
    t = table()
    t.write_csv(tmp_path / "locs.csv", z=True, sigma=True)  # every column measured: ThunderSTORM's full set
    lines = (tmp_path / "locs.csv").read_text().splitlines()
    assert lines[0] == ('"id","frame","x [nm]","y [nm]","z [nm]","sigma [nm]","intensity [photon]",'
                        '"offset [photon]","bkgstd [photon]","uncertainty [nm]"')
    assert lines[1].split(",")[:4] == ["1", "1", "50.0", "50.0"]
    assert float(lines[1].split(",")[-1]) == pytest.approx(np.sqrt((9 + 16) / 2), abs=1e-3)
    assert float(lines[1].split(",")[-2]) == pytest.approx(np.sqrt(20.0), abs=1e-3)  # bkgstd
    back = EmitterTable.read_csv(tmp_path / "locs.csv")
    for field in ("frame", "x_nm", "y_nm", "photons", "background_photons"):
        np.testing.assert_allclose(back[field], t[field], atol=1e-3)


def test_a_2d_models_csv_has_no_z_and_no_sigma_column_and_reads_back_with_zeros(tmp_path):
    table().write_csv(tmp_path / "locs.csv", z=False, sigma=False)
    assert header(tmp_path / "locs.csv") == ["id", "frame", "x [nm]", "y [nm]", "intensity [photon]",
                                             "offset [photon]", "bkgstd [photon]", "uncertainty [nm]"]
    assert header(tmp_path / "locs.csv") == list(csv_columns(z=False, sigma=False))
    back = EmitterTable.read_csv(tmp_path / "locs.csv")
    np.testing.assert_allclose(back["x_nm"], table()["x_nm"], atol=1e-3)
    np.testing.assert_allclose(back["photons"], table()["photons"], atol=1e-3)
    assert (back["z_nm"] == 0).all() and (back["sigma_nm"] == 0).all()  # what a table holds for "not measured"


def test_a_3d_models_csv_keeps_z_with_its_values_and_leaves_out_sigma(tmp_path):
    t = EmitterTable.from_columns(frame=np.array([1, 2]), x_nm=np.array([10.0, 20.0]), y_nm=30.0,
                                  z_nm=np.array([-412.5, 287.125]))
    t.write_csv(tmp_path / "locs.csv", z=True, sigma=False)
    assert header(tmp_path / "locs.csv") == ["id", "frame", "x [nm]", "y [nm]", "z [nm]", "intensity [photon]",
                                             "offset [photon]", "bkgstd [photon]", "uncertainty [nm]"]
    np.testing.assert_allclose(EmitterTable.read_csv(tmp_path / "locs.csv")["z_nm"], [-412.5, 287.125])


def test_by_default_the_csv_is_a_2d_fitters_with_its_fitted_sigma_and_no_z(tmp_path):
    t = EmitterTable.from_columns(frame=1, x_nm=np.array([10.0, 20.0]), y_nm=30.0, sigma_nm=np.array([151.5, 98.25]))
    t.write_csv(tmp_path / "locs.csv")
    assert "z [nm]" not in header(tmp_path / "locs.csv")
    assert header(tmp_path / "locs.csv")[4] == "sigma [nm]"  # ThunderSTORM's order, less z
    np.testing.assert_allclose(EmitterTable.read_csv(tmp_path / "locs.csv")["sigma_nm"], [151.5, 98.25])


def test_an_empty_table_round_trips_in_either_form(tmp_path):
    for z, sigma in ((False, False), (True, True)):
        EmitterTable.empty().write_csv(tmp_path / f"{z}.csv", z=z, sigma=sigma)
        assert len(EmitterTable.read_csv(tmp_path / f"{z}.csv")) == 0


def test_the_csv_reader_takes_a_thunderstorm_export_with_its_columns_in_any_order(tmp_path):
    (tmp_path / "ts.csv").write_text('"frame","id","y [nm]","x [nm]","sigma [nm]","uncertainty [nm]"\n'
                                     "2,1,300.5,100.25,140.0,12.0\n")
    back = EmitterTable.read_csv(tmp_path / "ts.csv")
    assert (back["frame"][0], back["x_nm"][0], back["y_nm"][0]) == (2, 100.25, 300.5)
    assert back["sigma_nm"][0] == 140.0 and back["x_uncertainty_nm"][0] == back["y_uncertainty_nm"][0] == 12.0
    assert back["z_nm"][0] == 0 and back["photons"][0] == 0


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
