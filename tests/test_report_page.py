"""`livescope report RUN --html PAGE`: an acquisition on one self-contained page, made from a real
live run on the virtual microscope: the account, raw and restored thumbnails (inline PNGs that
decode to the frames), noise before and after, latency and refusals over time, and the models."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest

from livescope.camera_estimate import noise_sigma
from livescope.png import grey_png
from tests.test_acquire_channels import cli


def test_a_live_run_becomes_a_page_a_microscopist_can_look_at(server, tmp_path):
    import imageio.v3 as iio

    raw = tmp_path / "run.ome.zarr"
    r = cli("acquire", "--frames", "12", "--size", "96", "--server", server.frames, "--pipeline", "denoise",
            "--output", str(raw))
    assert r.returncode == 0, r.stderr
    page = tmp_path / "run.html"
    r = cli("report", str(raw), "--html", str(page))
    assert r.returncode == 0, r.stderr
    text = page.read_text()
    assert "<th>status</th><td>complete</td>" in text
    assert "12 acquired of 12 planned, 12 restored, 0 refused" in text
    models = re.search(r"<th>models</th><td>([^<]+)</td>", text).group(1)
    assert models.startswith("denoise@") and f"<td>frames 0-11</td><td>{models}</td>" in text
    images = [iio.imread(io.BytesIO(base64.b64decode(b)), extension=".png")
              for b in re.findall(r"base64,([A-Za-z0-9+/=]+)", text)]
    assert len(images) == 6 and all(i.shape == (96, 96) for i in images)  # raw and restored, 3 frames each
    ratio = float(re.search(r"raw / restored = ([0-9.]+)", text).group(1))
    assert ratio > 2  # the restored frames are far less noisy
    assert text.count("<svg") == 3  # noise, latency, refusals
    latency_points = re.search(r"Latency.*?<polyline[^>]*points=\"([^\"]+)\"", text, re.S).group(1).split()
    assert len(latency_points) == 12  # one per frame


def test_the_page_is_refused_for_a_name_that_is_not_html(tmp_path):
    r = cli("report", str(tmp_path / "run.ome.zarr"), "--html", str(tmp_path / "run.pdf"))
    assert r.returncode == 2 and "name the page .html" in r.stderr and "Traceback" not in r.stderr


def test_noise_sigma_reads_the_noise_not_the_structure():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:128, :128]
    structure = 200 + 50 * np.sin(x / 9.0) * np.cos(y / 13.0)
    assert noise_sigma(structure + rng.normal(0, 5, structure.shape)) == pytest.approx(5, rel=0.1)
    assert noise_sigma(structure) < 0.5


def test_a_grey_png_decodes_to_its_pixels():
    import imageio.v3 as iio

    image = (np.arange(37 * 53) % 251).astype(np.uint8).reshape(37, 53)
    np.testing.assert_array_equal(iio.imread(io.BytesIO(grey_png(image)), extension=".png"), image)
