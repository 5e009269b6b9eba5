"""The figure of bench/localise_quality.py (``--figure``): Gaussian renders of the truth and each
method as mosaics of the first fields, and the 3-D model's rows (x-y coloured by z, x-z, z against z)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from localise_movies import Movie
from localise_scoring import interior

from livescope.emitters import EmitterTable
from livescope.models.localise.metrics import match_emitters
from livescope.render import RenderGrid, gaussian

RENDER_PX_NM = 10.0
MOSAIC = 3  # fields per side in the figure's mosaics


def mosaic(table: EmitterTable, movie: Movie) -> EmitterTable:
    """The first MOSAIC^2 frames side by side (frame k at tile k - 1), as one frame."""
    h, w = movie.frames.shape[1:]
    k = table["frame"].astype(np.int64) - 1
    keep = k < MOSAIC * MOSAIC
    rows = table.rows[keep].copy()
    rows["x_nm"] += (k[keep] % MOSAIC) * w * movie.pixel_nm
    rows["y_nm"] += (k[keep] // MOSAIC) * h * movie.pixel_nm
    rows["frame"] = 1
    return EmitterTable(rows)


Panel3d = tuple[str, Movie, EmitterTable, tuple[float, float]]  # title, movie, the 3-D model's table, z range


def figure_3d_row(axes: list, panel: Panel3d) -> None:
    """x-y of the mosaic coloured by z (truth, the 3-D model), an x-z side view of both, and the
    found z against the true z of the interior's lateral pairs (the identity dashed)."""
    title, movie, found, (z_lo, z_hi) = panel
    h, w = movie.frames.shape[1:]
    truth_m, found_m = mosaic(movie.truth, movie), mosaic(found, movie)
    colour = dict(cmap="viridis", vmin=z_lo, vmax=z_hi, s=3, linewidths=0)
    for ax, table, name in ((axes[0], truth_m, "truth"), (axes[1], found_m, "livescope3d")):
        ax.set_facecolor("black")
        points = ax.scatter(table["x_nm"], table["y_nm"], c=table["z_nm"], **colour)
        ax.set_xlim(0, MOSAIC * w * movie.pixel_nm)
        ax.set_ylim(MOSAIC * h * movie.pixel_nm, 0)  # rows down, as the renders
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{title}: {name} (colour: z)" if name == "truth" else f"{name} (colour: z)", fontsize=9)
    axes[1].figure.colorbar(points, ax=axes[1], fraction=0.046, pad=0.02, label="z (nm)")
    ax = axes[2]
    ax.scatter(truth_m["x_nm"], truth_m["z_nm"], s=3, c="0.6", linewidths=0, label="truth")
    ax.scatter(found_m["x_nm"], found_m["z_nm"], s=3, c="tab:red", linewidths=0, label="livescope3d")
    ax.set_xlabel("x (nm, mosaic)")
    ax.set_ylabel("z (nm)")
    ax.legend(fontsize=7, markerscale=3)
    ax.set_title("x-z side view", fontsize=9)
    ax = axes[3]
    inner_found, inner_truth = interior(found, movie), interior(movie.truth, movie)
    pairs = match_emitters(inner_found, inner_truth)
    ax.scatter(inner_truth["z_nm"][pairs.truth_index], inner_found["z_nm"][pairs.found_index], s=3, c="tab:blue",
               linewidths=0)
    ax.plot([z_lo, z_hi], [z_lo, z_hi], "k--", linewidth=1)
    ax.set_xlabel("true z (nm)")
    ax.set_ylabel("found z (nm)")
    ax.set_title(f"z of {pairs.found_index.size} interior lateral pairs", fontsize=9)


def figure(panels: list[tuple[str, Movie, dict[str, EmitterTable]]], path: Path,
           panels_3d: list[Panel3d] | None = None) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels_3d = panels_3d or []
    columns = ["truth", "livescope", "classical", "picasso"]
    rows = len(panels) + len(panels_3d)
    fig, axes = plt.subplots(rows, len(columns), figsize=(4 * len(columns), 4 * rows), squeeze=False)
    for r, panel in enumerate(panels_3d):
        figure_3d_row(list(axes[len(panels) + r]), panel)
    for r, (title, movie, found) in enumerate(panels):
        h, w = movie.frames.shape[1:]
        grid = RenderGrid(width_nm=MOSAIC * w * movie.pixel_nm, height_nm=MOSAIC * h * movie.pixel_nm,
                          pixel_nm=RENDER_PX_NM)
        for c, name in enumerate(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            table = movie.truth if name == "truth" else found.get(name)
            if table is None:
                ax.set_title(f"{name}: not run")
                continue
            # Truth has no uncertainty: give it the 20 nm floor every method's render also gets.
            image = gaussian(mosaic(table, movie), grid, min_sigma_nm=20.0).image
            ax.imshow(image, cmap="magma", vmax=max(float(np.percentile(image, 99.9)), 1e-9))
            ax.set_title(f"{title}: {name}" if c == 0 else name, fontsize=9)
    fig.suptitle(f"Gaussian renders (10 nm pixels, sigma = max(uncertainty, 20 nm)), first {MOSAIC * MOSAIC} "
                 f"fields as a {MOSAIC}x{MOSAIC} mosaic" + ("; 3-D rows: emitters as dots" if panels_3d else ""))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {"figure": str(path)}
