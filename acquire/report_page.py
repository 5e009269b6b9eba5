"""`livescope report RUN --html PAGE`: an acquisition on one self-contained HTML page, for a
microscopist to look at rather than read: the run's account, raw and restored thumbnails side by side,
the noise before and after restoration, each frame's latency, refusals over time, and which
model@version restored which frames. Images are inline PNGs, charts inline SVG: one file to mail.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from livescope.acquire.journal import FrameTimes, RunAccount
from livescope.camera_estimate import noise_sigma
from livescope.charts import line_chart
from livescope.png import grey_png, stretched
from livescope.stackio import StackError, read_stack

THUMBNAIL_PX = 256
NOISE_FRAMES = 48


def _thumbnail(frame: np.ndarray) -> str:
    h, w = frame.shape
    y0, x0 = max(0, (h - THUMBNAIL_PX) // 2), max(0, (w - THUMBNAIL_PX) // 2)
    crop = frame[y0:y0 + THUMBNAIL_PX, x0:x0 + THUMBNAIL_PX]
    data = base64.b64encode(grey_png(stretched(crop))).decode()
    return f'<img alt="" width="{crop.shape[1]}" height="{crop.shape[0]}" src="data:image/png;base64,{data}">'


def _figure(frame: np.ndarray, caption: str) -> str:
    return f"<figure>{_thumbnail(frame)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def render_page(account: RunAccount, times: FrameTimes, folder: Path) -> str:
    """The page's HTML; the run's data are looked for in ``folder`` (the journal's: the paths the
    journal holds may be relative to wherever the acquisition ran)."""
    plan, end = account.plan, account.end.summary if account.end else {}
    rows = [("status", account.status), ("started", f"{plan.started_utc} on {plan.host}"),
            ("pipeline", ", ".join(plan.pipeline) or "- (acquire only)"),
            ("models", ", ".join(end.get("models", [])) or "-"),
            ("frames", f"{account.frames_acquired} acquired of {plan.frames_planned} planned, "
                       f"{account.frames_restored} restored, {account.frames_refused} refused"
                       + (f" ({', '.join(f'{k} {v}' for k, v in sorted(account.refusal_reasons.items()))})"
                          if account.refusal_reasons else "")),
            ("raw data", plan.raw_path), ("restored data", plan.results_path or "-")]
    if end.get("latency_p50_ms") is not None:
        rows.append(("latency", f"p50 {end['latency_p50_ms']:.0f} ms, p99 {end.get('latency_p99_ms', 0):.0f} ms"))
    if end.get("acquisition_fps"):
        rows.append(("rate", f"{end['acquisition_fps']:.1f} frames/s acquired"))
    body = ["<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                                for k, v in rows) + "</table>"]
    body += _images_and_noise(folder / Path(plan.raw_path).name,
                              folder / Path(plan.results_path).name if plan.results_path else None)
    seqs = sorted(set(times.acquired_s) & set(times.restored_s))
    if seqs:
        latency = np.array([(times.restored_s[s] - times.acquired_s[s]) * 1e3 for s in seqs])
        body += ["<h2>Latency: acquired to restored and written</h2>",
                 line_chart({"latency": (np.array(seqs), latency)}, "frame", "ms")]
    if times.acquired_s:
        t_end = max(times.acquired_s.values())
        grid = np.linspace(0, t_end, 100)
        refused_t = np.sort([t for t, _ in times.refused.values()])
        body += ["<h2>Refused and dropped frames</h2>",
                 line_chart({"refused or dropped (cumulative)": (grid, np.searchsorted(refused_t, grid, side="right"))},
                            "s since the start", "frames")]
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>livescope run {html.escape(Path(plan.raw_path).name)}</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}th{text-align:left;padding-right:1em}"
            "td,th{vertical-align:top}figure{display:inline-block;margin:0 1em 1em 0}</style></head><body>"
            f"<h1>livescope run {html.escape(Path(plan.raw_path).name)}</h1>" + "".join(body) + "</body></html>")


def _images_and_noise(raw_path: Path, restored_path: Path | None) -> list[str]:
    try:
        raw = read_stack(raw_path)
    except StackError as e:
        return [f"<p>the raw data cannot be read: {html.escape(str(e))}</p>"]
    restored = None
    if restored_path is not None and restored_path.suffix != ".csv":
        try:
            restored = read_stack(restored_path)
        except StackError as e:
            return [f"<p>the restored data cannot be read: {html.escape(str(e))}</p>"]
    n = raw.n_frames
    shown = sorted({0, n // 2, n - 1}) if n else []
    out = ["<h2>Raw and restored</h2>"]
    for i in shown:
        pair = [_figure(raw.frames[i], f"raw, frame {i}")]
        if restored is not None and i < restored.n_frames:
            pair.append(_figure(restored.frames[i], f"restored, frame {i}"))
        out.append("<div>" + "".join(pair) + "</div>")
    made = restored.info.provenance if restored is not None else None
    if made is not None and made.model_runs:
        out.append("<h2>Which model restored which frames</h2><table>" + "".join(
            f"<tr><td>frames {r.first_frame}-{r.first_frame + r.frame_count - 1}</td><td>{html.escape(r.model)}</td>"
            f"</tr>" for r in made.model_runs) + "</table>")
        if made.frames_without_result:
            out.append(f"<p>{len(made.frames_without_result)} frames got no result (left at zero).</p>")
    sample = sorted(set(np.linspace(0, n - 1, min(n, NOISE_FRAMES)).round().astype(int))) if n else []
    series = {"raw": (np.array(sample), np.array([noise_sigma(raw.frames[i]) for i in sample]))}
    if restored is not None:
        kept = [i for i in sample if i < restored.n_frames and restored.frames[i].any()]
        series["restored"] = (np.array(kept), np.array([noise_sigma(restored.frames[i]) for i in kept]))
        ratio = np.nanmedian(series["raw"][1]) / max(np.nanmedian(series["restored"][1]), 1e-9) if kept else None
        caption = f"<p>median noise σ: raw / restored = {ratio:.1f}</p>" if ratio else ""
    else:
        caption = ""
    out += ["<h2>Noise before and after</h2>", line_chart(series, "frame", "noise σ (ADU)"), caption,
            "<p>σ from the finest diagonal wavelet details (Donoho's median estimator, so that structure "
            "barely counts).</p>"]
    return out


def write_page(account: RunAccount, times: FrameTimes, folder: Path, out: Path) -> Path:
    """Write the page atomically (a temporary file renamed into place)."""
    tmp = out.with_name(f".{out.name}.partial")
    tmp.write_text(render_page(account, times, folder), encoding="utf-8")
    tmp.replace(out)
    return out
