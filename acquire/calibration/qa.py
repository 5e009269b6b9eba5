"""The QA report of a pairs session: what each pair looks like after registration, and why a pair fails.

``write_qa_report`` writes into one folder (atomically: a temporary folder renamed over it):

    report.html        summary at the top, then one row per pair: thumbnails (low, registered
                       high, difference), shift, NCC before/after, residual, SNR of both images,
                       the verdict and its reason; intensity histograms of both modalities (SVG)
    pair_PPP_RR.png    each pair's thumbnails side by side: low | registered high | difference
    qa_overview.png    a few pairs (low | registered high) above a plot of every pair's shift
                       (dots: passed green, failed red) and a bar of its residual, for the README

PNGs are written with imageio (it comes with scikit-image) and drawn with numpy: no matplotlib.
SNR is the brightest structure (99.9th percentile) above the camera baseline (the median where the
baseline is not known) over the noise sigma (`camera_estimate.noise_sigma`, Donoho's wavelet
estimate as in `skimage.restoration.estimate_sigma`).
"""

from __future__ import annotations

import html
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from skimage.transform import resize

from livescope.acquire.calibration.registration import (
    PairLike,
    PairRegistration,
    RegistrationError,
    RegistrationReport,
    apply_registration,
    image_stats,
)
from livescope.stackio import move_into_place

REPORT_FILE = "report.html"
OVERVIEW_FILE = "qa_overview.png"
THUMB_PX = 128  # thumbnails are at most this many pixels a side
_OVERVIEW_PAIRS = 4
_HIST_BINS = 64


def write_qa_report(pairs: Iterable[PairLike], report: RegistrationReport, out_dir: Path, *, title: str = "",
                    baseline_adu: float | None = None) -> Path:
    """Write the QA report of ``pairs`` registered by ``report`` into ``out_dir`` (replaced as a
    whole); returns the path of ``report.html``. RegistrationError for a pair the report lacks."""
    out_dir = Path(out_dir)
    pairs = list(pairs)
    rows = []
    for pair in pairs:
        reg = report.get(pair.position, pair.repeat)
        if reg is None:
            raise RegistrationError(f"position {pair.position} repeat {pair.repeat} is not in the registration "
                                    "report: register the pairs again")
        rows.append((pair, reg))
    tmp = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.mkdir(parents=True)
        tiles = []
        body = []
        for pair, reg in rows:
            tile = _pair_tiles(pair, reg)
            name = f"pair_{pair.position:03d}_{pair.repeat:02d}.png"
            iio.imwrite(tmp / name, np.hstack(_gap(tile)))
            tiles.append((tile, reg))
            body.append(_row_html(pair, reg, name, baseline_adu, report.settings.smoothing_px))
        iio.imwrite(tmp / OVERVIEW_FILE, overview_image(tiles))
        hist = _histograms_svg([p.low_adu for p, _ in rows], [p.high_adu for p, _ in rows])
        (tmp / REPORT_FILE).write_text(_page(title, report, body, hist), encoding="utf-8")
        move_into_place(tmp, out_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RegistrationError(f"cannot write the QA report in {out_dir}: {e.strerror or e}") from None
    return out_dir / REPORT_FILE


# -- images ---------------------------------------------------------------------------------------


def _pair_tiles(pair: PairLike, reg: PairRegistration) -> list[np.ndarray]:
    """low, registered high, |difference| (after brightness matching) as uint8 thumbnails."""
    low = np.asarray(pair.low_adu, dtype=np.float64)
    try:
        high = apply_registration(pair.high_adu, reg).astype(np.float64)
    except RegistrationError:
        high = np.full_like(low, np.nan)
    if high.shape != low.shape:  # a pair failed for its shapes: show the high image as acquired
        high = resize(np.asarray(pair.high_adu, dtype=np.float64), low.shape, order=1)
    valid = np.isfinite(high)
    diff = np.full_like(low, np.nan)
    if valid.sum() > 16:
        x, y = high[valid], low[valid]
        gain, offset = np.polyfit(x, y, 1) if np.ptp(x) > 0 else (0.0, float(y.mean()))
        diff[valid] = np.abs(y - (gain * x + offset))
    low8, high8 = _to_uint8(low), _to_uint8(high)
    return [_thumb(low8), _thumb(high8), _thumb(_to_uint8(diff, lower=0.0))]


def _to_uint8(img: np.ndarray, lower: float | None = None) -> np.ndarray:
    """Scaled between the 0.5th (or ``lower``) and 99.5th percentiles of its finite pixels; NaN
    (outside the registered field) is black."""
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return np.zeros(img.shape, np.uint8)
    lo = float(np.percentile(finite, 0.5)) if lower is None else lower
    hi = float(np.percentile(finite, 99.5))
    scaled = (np.nan_to_num(img, nan=lo) - lo) / (hi - lo) if hi > lo else np.zeros(img.shape)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def _thumb(img: np.ndarray) -> np.ndarray:
    scale = THUMB_PX / max(img.shape)
    if scale >= 1:
        return img
    shape = (max(1, round(img.shape[0] * scale)), max(1, round(img.shape[1] * scale)))
    return (resize(img, shape, order=1, anti_aliasing=True, preserve_range=True)).astype(np.uint8)


def _gap(tiles: list[np.ndarray], px: int = 4) -> list[np.ndarray]:
    out = []
    for i, t in enumerate(tiles):
        if i:
            out.append(np.full((t.shape[0], px), 255, np.uint8))
        out.append(t)
    return out


def overview_image(tiles: list[tuple[list[np.ndarray], PairRegistration]]) -> np.ndarray:
    """Up to `_OVERVIEW_PAIRS` pairs (low | registered high) in a row, over a shift scatter (each
    pair's (dx, dy): green passed, red failed; grid lines every pixel) and a residual bar chart,
    as one RGB uint8 image."""
    shown = [np.hstack(_gap(t[:2])) for t, _ in tiles[:_OVERVIEW_PAIRS]]
    height = max((s.shape[0] for s in shown), default=THUMB_PX)
    strips = [np.pad(s, ((0, height - s.shape[0]), (0, 0)), constant_values=255) for s in shown]
    top = np.hstack(_gap(strips, 8)) if strips else np.full((height, THUMB_PX), 255, np.uint8)
    top = np.repeat(top[..., None], 3, axis=2)
    plot = np.hstack([_shift_plot([r for _, r in tiles], height), np.full((height, 8, 3), 255, np.uint8),
                      _residual_plot([r for _, r in tiles], height)])
    width = max(top.shape[1], plot.shape[1])
    pad = lambda a: np.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0)), constant_values=255)  # noqa: E731
    return np.vstack([pad(top), np.full((8, width, 3), 255, np.uint8), pad(plot)])


_GREEN, _RED, _GREY = (0, 150, 0), (210, 0, 0), (200, 200, 200)


def _shift_plot(regs: list[PairRegistration], size: int) -> np.ndarray:
    """Each pair's shift as a dot on a square plot centred on zero, scaled to the largest shift."""
    img = np.full((size, size, 3), 255, np.uint8)
    reach = max([1.0, *(max(abs(v) for v in r.shift_px) for r in regs)]) * 1.2
    to_px = lambda v: int(round((v / reach + 1) / 2 * (size - 1)))  # noqa: E731
    for v in range(-int(reach), int(reach) + 1):  # a grid line every pixel of shift
        img[:, to_px(v)] = img[to_px(v), :] = _GREY
    img[:, to_px(0)] = img[to_px(0), :] = (120, 120, 120)
    for r in regs:
        y, x = to_px(r.shift_px[0]), to_px(r.shift_px[1])
        img[max(0, y - 2):y + 3, max(0, x - 2):x + 3] = _GREEN if r.passed else _RED
    return img


def _residual_plot(regs: list[PairRegistration], size: int) -> np.ndarray:
    """One bar per pair: its residual (0..1, the full height is 1), green passed, red failed."""
    width = max(size, 6 * len(regs))
    img = np.full((size, width, 3), 255, np.uint8)
    img[0, :] = img[-1, :] = _GREY
    bar = max(1, width // max(1, len(regs)) - 2)
    for i, r in enumerate(regs):
        h = int(round(min(1.0, r.residual_rms) * (size - 2)))
        x0 = i * (bar + 2) + 1
        img[size - 1 - h:size - 1, x0:x0 + bar] = _GREEN if r.passed else _RED
    return img


# -- html -----------------------------------------------------------------------------------------


def _row_html(pair: PairLike, reg: PairRegistration, png: str, baseline_adu: float | None,
              smoothing_px: float) -> str:
    snr = []
    for img in (pair.low_adu, pair.high_adu):
        stats = image_stats(np.asarray(img), smoothing_px, baseline_adu=baseline_adu)
        snr.append(f"{stats.snr:.1f}")
    verdict = "pass" if reg.passed else f"FAIL: {html.escape(reg.reason or '')}"
    cls = "pass" if reg.passed else "fail"
    return (f'<tr class="{cls}" id="p{pair.position}r{pair.repeat}"><td>{pair.position}</td><td>{pair.repeat}</td>'
            f'<td><img src="{png}" alt="position {pair.position} repeat {pair.repeat}"></td>'
            f"<td>{reg.shift_px[0]:+.2f}, {reg.shift_px[1]:+.2f}</td>"
            f"<td>{reg.ncc_before:.3f} &rarr; {reg.ncc_after:.3f}</td><td>{reg.residual_rms:.3f}</td>"
            f"<td>{reg.instability_px:.2f}</td><td>{snr[0]} / {snr[1]}</td><td>{verdict}</td></tr>")


def _histograms_svg(lows: list[np.ndarray], highs: list[np.ndarray], width: int = 480, height: int = 160) -> str:
    """Log-count intensity histograms of all low (blue) and all high (orange) pixels, one SVG."""
    values = [np.concatenate([np.ravel(a) for a in group]).astype(np.float64) for group in (lows, highs)]
    lo = min(float(v.min()) for v in values)
    hi = max(float(v.max()) for v in values)
    edges = np.linspace(lo, hi if hi > lo else lo + 1, _HIST_BINS + 1)
    lines = []
    for v, colour in zip(values, ("#1f77b4", "#ff7f0e")):
        counts = np.log10(np.histogram(v, edges)[0] + 1)
        ys = height - 20 - counts / max(counts.max(), 1e-9) * (height - 30)
        xs = np.linspace(40, width - 10, _HIST_BINS)
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
            f'<rect width="{width}" height="{height}" fill="white" stroke="#ccc"/>{"".join(lines)}'
            f'<text x="40" y="{height - 4}" font-size="11">{lo:g} ADU</text>'
            f'<text x="{width - 10}" y="{height - 4}" font-size="11" text-anchor="end">{hi:g} ADU</text>'
            f'<text x="44" y="14" font-size="11" fill="#1f77b4">low</text>'
            f'<text x="74" y="14" font-size="11" fill="#ff7f0e">high</text>'
            f'<text x="104" y="14" font-size="11">(log counts)</text></svg>')


def _page(title: str, report: RegistrationReport, rows: list[str], hist: str) -> str:
    s = report.settings
    failed = "".join(f"<li>position {p.position} repeat {p.repeat}: {html.escape(p.reason or '')}</li>"
                     for p in report.failed)
    title = html.escape(title or f"pairs session {report.session_id}")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}} tr.fail{{background:#fde8e8}}
tr.pass{{background:#eefbe8}}</style></head><body>
<h1>{title}</h1>
<p><b>{len(report.passed)} of {len(report.pairs)} pairs pass QA</b>; failed pairs are left out of training.
{html.escape(report.summary())}.</p>
{f"<ul>{failed}</ul>" if failed else ""}
<p>Registration: {"affine" if s.affine else "translation"}, 1/{s.upsample_factor} px; QA: shift &le;
{s.max_shift_px:g} px, NCC after &ge; {s.min_ncc:g}, half-field instability &le; {s.max_instability_px:g} px.</p>
<p><img src="{OVERVIEW_FILE}" alt="overview: pairs and shifts"></p>
<h2>Intensity histograms</h2>{hist}
<h2>Pairs</h2>
<p>Thumbnails: low | high registered onto low | |low - matched high|. Shift (dy, dx) px carries high onto
low. SNR: brightest structure over the noise sigma.</p>
<table><tr><th>position</th><th>repeat</th><th>low | registered high | difference</th><th>shift (dy, dx) px</th>
<th>NCC before &rarr; after</th><th>residual</th><th>instability px</th><th>SNR low / high</th><th>QA</th></tr>
{"".join(rows)}
</table></body></html>
"""
