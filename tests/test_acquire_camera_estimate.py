"""A localise acquisition on a real rig (Micro-Manager's DemoCamera) without camera flags: the
camera is estimated from frames snapped before the run, said, and every frame is localised."""

from __future__ import annotations

import pytest

from tests.test_acquire_channels import MM_DEMO_CONFIG, _micro_manager_demo_env, cli


@pytest.fixture(scope="module")
def demo_env() -> dict:
    return _micro_manager_demo_env()


def test_a_real_rig_without_camera_flags_localises_with_the_camera_estimated_from_its_frames(
        server, tmp_path, demo_env):
    r = cli("acquire", "--mm-config", str(MM_DEMO_CONFIG), "--frames", "3", "--server", server.frames,
            "--pipeline", "localise", "--output", str(tmp_path / "run.ome.zarr"), "--render-px", "100",
            env=demo_env)
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stdout.split())
    assert "camera estimated from" in said and "snapped before the run" in said
    assert (tmp_path / "run.localise.csv").is_file()


def test_a_render_too_large_for_memory_is_refused_before_acquiring_naming_a_render_pixel_that_fits(
        server, tmp_path, demo_env):
    # The demo rig's 10x objective: 512 px of 1 µm. At 10 nm its render would be 51200 px square (21 GB).
    r = cli("acquire", "--mm-config", str(MM_DEMO_CONFIG), "--frames", "2", "--server", server.frames,
            "--pipeline", "localise", "--output", str(tmp_path / "run.ome.zarr"), "--render-px", "10",
            env=demo_env)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    said = " ".join(r.stderr.split())
    assert "--render-px" in said and "use render pixels of at least 45 nm" in said, said
    assert not (tmp_path / "run.ome.zarr").exists()
