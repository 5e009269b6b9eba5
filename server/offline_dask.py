"""Offline restoration and refocusing on a Dask cluster: ``livescope denoise|restore|refocus IN.ome.zarr
OUT.ome.zarr --dask ADDR``.

The same restoration as `run_offline`, chunk by chunk on a cluster's workers (dask.distributed):

- IN is read lazily (`stackio.open_zarr_stack`), one task per chunk of ``batch`` frames and, when
  the frames are larger than a tile, of one tile: chunks follow the tiling code's own windows
  (first core ``tile - halo``, then ``tile - 2 halo``, on the size multiple) and reach the card's
  halo into their neighbours (``map_overlap``), so the first and middle windows are exactly the
  ones the single-process run uses; only the last along each axis starts elsewhere (the tiler
  shifts it back to a full tile), which changes its pixels by float rounding only.
- Each chunk runs the single-process code (`restore_stack`; `refocus_frames` with the chunk's
  delta-z) on a model loaded once per worker process (`_MODELS`, keyed by the ONNX file and its
  sha256); `_map_and_write` takes that per-chunk function as a parameter. Refocusing runs whole
  frames, as its single-process run does (`run_refocus_dask` says why).
- Workers write whole frames straight into the output's zarr array (one chunk per frame, so no two
  writers share a chunk); `stackio.write_ome_zarr_filled` makes the array, the metadata and the
  provenance exactly as the single-process writer does, in a hidden folder renamed into place when
  every frame is written, so a failed worker leaves no output.

``local:N`` starts a LocalCluster of N single-threaded worker processes; anything else is a
scheduler's address. Frame-context models, fixed-size models and a camera-agnostic model's
photon scale estimated from the data are handled as noted where they are refused or computed.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from livescope.camera_estimate import PhotonScale
from livescope.provenance import CameraModel, Provenance, sha256_of
from livescope.server.ensemble import transform_count
from livescope.server.offline import (
    OfflineError,
    OfflineSummary,
    Progress,
    check_ensemble,
    check_image_model,
    gate_warnings,
    load_model,
    resolve_model,
    restore_stack,
    scale_and_warnings,
    tiling_for,
    to_model_dtype,
)
from livescope.server.offline_refocus import (
    RefocusSummary,
    check_frame,
    refocus_frames,
    refocus_model,
    refocus_provenance,
    sweep_info,
)
from livescope.server.tiling import effective_tile, plan_tiles
from livescope.stackio import (
    StackError,
    StackInfo,
    ZarrSource,
    open_zarr_stack,
    stack_format,
    write_ome_zarr_filled,
    write_zarr_frames,
)

if TYPE_CHECKING:
    from distributed import Client

    from livescope.repository import ModelVersion
    from livescope.server.models import LoadedModel

DEFAULT_CONNECT_TIMEOUT_S = 10.0

# One onnxruntime session per worker process, loaded by its first task: (onnx path, sha256, provider) -> model
_MODELS: dict[tuple[str, str, str | None], LoadedModel] = {}


@contextlib.contextmanager
def dask_client(address: str, *, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> Iterator[Client]:
    """A client of the scheduler at ``address``, or of a LocalCluster of N processes for 'local:N'.
    OfflineError (one line) when the scheduler cannot be reached within ``timeout_s``."""
    from distributed import Client, LocalCluster

    if address.startswith("local:"):
        n = address.removeprefix("local:")
        if not n.isdigit() or int(n) < 1:
            raise OfflineError(f"--dask {address}: local:N needs a number of worker processes, e.g. local:4")
        with LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            yield client
        return
    try:
        client = Client(address, timeout=timeout_s)
    except (OSError, TimeoutError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise OfflineError(f"--dask {address}: cannot reach a Dask scheduler there within {timeout_s:g} s "
                           f"({reason}); start one (dask scheduler) or use --dask local:N") from None
    with client:
        yield client


def run_offline_dask(task_stage: str, in_path: str | os.PathLike, out_path: str | os.PathLike, *, scheduler: str,
                     model_dirs: Sequence[str | os.PathLike] = (), overwrite: bool = False,
                     progress: Progress | None = None, batch: int = 4, tile_px: int | None = None,
                     provider: str | None = None, threads: int | None = None, task: str | None = None,
                     baseline_adu: float | None = None, e_per_adu: float | None = None, em_gain: float = 1.0,
                     ensemble: bool = False, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> OfflineSummary:
    """`run_offline` on the Dask cluster ``scheduler`` (an address, or 'local:N'); IN and OUT OME-Zarr.

    ``threads``: each worker's onnxruntime threads (default: onnxruntime's; for local:N, the cores
    shared among the N workers). Raises StackError / OfflineError with one-line messages."""
    in_path, out_path = Path(in_path), Path(out_path)
    _check_paths(in_path, out_path, overwrite)
    version = resolve_model(task_stage, model_dirs)
    card = version.card
    check_image_model(card, task)
    check_ensemble(card, ensemble)
    if card.context_frames > 1 or card.tiling.tile_px is not None:
        need = "its neighbour frames" if card.context_frames > 1 else "a fixed tile size"
        raise OfflineError(f"{card.ref} needs {need}, which --dask does not give it yet; run it without --dask")
    info, source = open_zarr_stack(in_path)
    threads = _worker_threads(scheduler, threads)
    load_model(version, provider, threads)  # a model that cannot load is refused here, before the cluster starts
    frames = _lazy_frames(source, in_path)
    n, h, w = frames.shape
    tile, _ = tiling_for(card, tile_px)
    chunks, depth = _tiled(frames, card, tile, batch)
    transforms = transform_count(ensemble)
    with dask_client(scheduler, timeout_s=timeout_s) as client:
        scale, warnings = _scale_and_warnings(client, card, frames, in_path, baseline_adu, e_per_adu, em_gain)
        t0 = time.perf_counter()
        provenance = Provenance.of_one_model(
            operation=task or card.task, source=str(in_path), frame_count=n, model=card.ref,
            model_file=version.onnx_path, camera=None if scale is None else CameraModel(**scale.model_dump()),
            ensemble_transforms=transforms)
        clipped = _clipped(client, frames, card.inputs[0].dtype)
        _map_and_write(client, chunks, depth, _restore_chunk, out_path, info, provenance, overwrite, progress,
                       **_model_args(version, provider, threads), batch=batch, tile_px=tile_px, scale=scale,
                       ensemble=ensemble)
        seconds = time.perf_counter() - t0
        providers = _providers(client)
    plan = plan_tiles(h, w, tile_px=tile, halo_px=card.tiling.halo_px, size_multiple_px=card.tiling.size_multiple_px)
    return OfflineSummary(model=card.ref, provider=providers, input=str(in_path),
                          output=str(out_path), frames=n, frame_shape=(h, w),
                          tile_px=tile if plan.n_tiles > 1 else None, clipped_pixels=clipped, seconds=seconds,
                          warnings=warnings, camera=None if scale is None else scale.source,
                          ensemble_transforms=transforms)


def run_refocus_dask(in_path: str | os.PathLike, out_path: str | os.PathLike, *, scheduler: str,
                     dz_um: float | None = None, sweep: str | None = None, frame: int = 0, model: str = "refocus",
                     model_dirs: Sequence[str | os.PathLike] = (), overwrite: bool = False,
                     progress: Progress | None = None, batch: int = 4, provider: str | None = None,
                     threads: int | None = None, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> RefocusSummary:
    """`run_refocus_offline` on the Dask cluster ``scheduler``; IN and OUT OME-Zarr, OUT laid out and
    described as the single-process run writes it (a sweep: a ZYX stack spaced by its step).

    Chunks are ``batch`` whole frames (a sweep's planes), never tiles: a refocusing graph divides
    each frame by its own mean (`models.refocus.net`), so a tile, with its own mean, would not give
    the whole frame's pixels."""
    in_path, out_path = Path(in_path), Path(out_path)
    version, planes = refocus_model(model, model_dirs, dz_um, sweep)
    _check_paths(in_path, out_path, overwrite)
    card = version.card
    info, source = open_zarr_stack(in_path)
    threads = _worker_threads(scheduler, threads)
    load_model(version, provider, threads)
    import dask.array as da  # an optional extra: imported once a run is sure to start

    frames = _lazy_frames(source, in_path)
    n, h, w = frames.shape
    like: StackInfo = info
    if sweep is not None:  # the one frame, read once, as many planes, chunked as frames are
        check_frame(frame, n, in_path)
        frames = da.broadcast_to(frames[frame : frame + 1], (len(planes), h, w))
        like = sweep_info(out_path, frames.shape, info.pixel_size_um, planes)
    chunks, depth = frames.rechunk((batch, h, w)), {0: 0, 1: 0, 2: 0}
    provenance = refocus_provenance(version, in_path, len(frames), sweep, frame)
    with dask_client(scheduler, timeout_s=timeout_s) as client:
        t0 = time.perf_counter()
        _map_and_write(client, chunks, depth, _refocus_chunk, out_path, like, provenance, overwrite, progress,
                       **_model_args(version, provider, threads), batch=batch, dz_um=planes)
        seconds = time.perf_counter() - t0
        providers = _providers(client)
    return RefocusSummary(model=card.ref, provider=providers, input=str(in_path), output=str(out_path),
                          frames_in=n, planes_out=len(frames), dz_um=tuple(float(p) for p in planes),
                          frame_shape=(h, w), seconds=seconds, warnings=gate_warnings(card))


def _check_paths(in_path: Path, out_path: Path, overwrite: bool) -> None:
    for path, role, wrong in ((in_path, "reads", in_path.is_file()),
                              (out_path, "writes", stack_format(out_path) != "ome-zarr")):
        if wrong:
            raise StackError(f"{path}: --dask {role} OME-Zarr (.ome.zarr) stacks only; convert it or run "
                             "without --dask")
    if out_path.exists() and not overwrite:
        raise StackError(f"{out_path} already exists; choose another output or pass --overwrite")


def _worker_threads(scheduler: str, threads: int | None) -> int | None:
    """onnxruntime threads per worker: as asked, or for local:N the cores shared among the N."""
    if threads is None and scheduler.startswith("local:") and scheduler[6:].isdigit():
        return max(1, (os.cpu_count() or 1) // max(1, int(scheduler[6:])))
    return threads


def _lazy_frames(source: ZarrSource, in_path: Path):
    """IN's pixels as a dask array of (N, H, W) frames, one chunk per frame, read by the workers."""
    import dask.array as da

    frames = da.from_array(source, chunks=(1,) * (source.ndim - 2) + tuple(source.shape[-2:]), asarray=True,
                           lock=False, fancy=False, name=f"livescope-read-{in_path.name}-{time.time_ns()}")
    return frames.reshape(-1, *source.shape[-2:])


def _tiled(frames, card, tile: int, batch: int):
    """``frames`` in chunks of ``batch`` frames by the tiling code's tiles, and the overlap depth
    each chunk reaches into its neighbours (`_axis_chunks`)."""
    _, h, w = frames.shape
    (cy, dy), (cx, dx) = _axis_chunks(h, w, tile, card)
    return frames.rechunk((batch, cy, cx)), {0: 0, 1: dy, 2: dx}


def _map_and_write(client: Client, chunks, depth: dict[int, int], per_chunk: Callable[..., np.ndarray],
                   out_path: Path, like: StackInfo, provenance: Provenance, overwrite: bool,
                   progress: Progress | None, **kwargs) -> None:
    """``per_chunk(chunk, **kwargs)`` on every chunk with its overlap (only its core is kept), on the
    workers, which write the results into OUT, made as `write_ome_zarr_filled` makes it."""
    n, h, w = chunks.shape
    result = chunks.map_overlap(per_chunk, depth=depth, boundary="none", dtype=np.float32,
                                meta=np.empty((0, 0, 0), np.float32), **kwargs)
    result = result.rechunk((chunks.chunks[0], h, w))  # whole frames: each written by one task, into its own chunks

    def fill(array_path: Path) -> tuple[float, float]:
        return _compute_and_write(client, result, array_path, progress)

    write_ome_zarr_filled(out_path, (n, h, w), fill, like, overwrite=overwrite, provenance=provenance)


def _model_args(version: ModelVersion, provider: str | None, threads: int | None) -> dict:
    """What a worker needs to load (once) the model a chunk runs: `_model`'s arguments."""
    return {"version": version, "sha": sha256_of(version.onnx_path), "provider": provider, "threads": threads}


def _providers(client: Client) -> str:
    return "+".join(sorted({p for ps in client.run(_providers_loaded).values() for p in ps})) or "none"


def _axis_chunks(h: int, w: int, tile: int, card) -> tuple[tuple[tuple[int, ...], int], tuple[tuple[int, ...], int]]:
    """Per image axis, (chunk sizes, overlap depth): one chunk where the single-process run takes
    the whole axis in one tile; else the tiling code's cores, each reaching ``halo`` beyond."""
    m = card.tiling.size_multiple_px
    plan = plan_tiles(h, w, tile_px=tile, halo_px=card.tiling.halo_px, size_multiple_px=m)
    tile_e, halo = effective_tile(tile, card.tiling.halo_px, m)
    # dask takes an overlap from the neighbouring chunk only, so no chunk may be thinner than the halo
    core = max(tile_e - 2 * halo, halo)

    def along(length: int, spans: int) -> tuple[tuple[int, ...], int]:
        if spans == 1:
            return (length,), 0
        chunks = [tile_e - halo]
        while sum(chunks) < length:
            chunks.append(min(core, length - sum(chunks)))
        if len(chunks) > 1 and chunks[-1] < halo:  # a sliver at the edge joins its neighbour
            chunks[-2:] = [chunks[-2] + chunks[-1]]
        return tuple(chunks), halo

    return along(h, len(plan.rows)), along(w, len(plan.cols))


def _scale_and_warnings(client: Client, card, frames, in_path: Path, baseline_adu: float | None,
                        e_per_adu: float | None, em_gain: float) -> tuple[PhotonScale | None, tuple[str, ...]]:
    """As the single-process run finds them. A camera-agnostic model's photon scale is estimated
    from the whole stack, which is gathered here once for it; otherwise only the frames that
    `domain_warnings` samples (every len // 16-th) are read."""
    sample = frames if card.normalisation.kind == "photons" else frames[::max(1, len(frames) // 16)]
    return scale_and_warnings(card, client.compute(sample).result(), in_path, baseline_adu=baseline_adu,
                              e_per_adu=e_per_adu, em_gain=em_gain)


def _clipped(client: Client, frames, dtype: str) -> int:
    """Input pixels outside the model's input dtype, counted on the workers."""
    if frames.dtype.name == dtype:
        return 0
    counts = frames.map_blocks(lambda b: np.array([[[to_model_dtype(b, dtype)[1]]]]), chunks=(1, 1, 1), dtype=np.int64)
    return int(client.compute(counts.sum()).result())


def _compute_and_write(client: Client, restored, array_path: Path, progress: Progress | None) -> tuple[float, float]:
    """Every frame block computed and written by the workers; (min, max) of all of them."""
    from dask import delayed
    from distributed import as_completed

    starts = np.cumsum((0, *restored.chunks[0]))
    writes = [delayed(_write_block)(block, str(array_path), int(start))
              for block, start in zip(restored.to_delayed().ravel(), starts)]
    futures = client.compute(writes)
    done, low, high = 0, np.inf, -np.inf
    try:
        for future in as_completed(futures):
            count, lo, hi = future.result()
            done, low, high = done + count, min(low, lo), max(high, hi)
            if progress is not None:
                progress(done, restored.shape[0])
    finally:
        client.cancel(futures)
    return (float(low), float(high)) if done else (0.0, 1.0)


# -- on the workers ---------------------------------------------------------------------------


def _model(version: ModelVersion, sha: str, provider: str | None, threads: int | None) -> LoadedModel:
    key = (str(version.onnx_path), sha, provider)
    if key not in _MODELS:
        _MODELS[key] = load_model(version, provider, threads)
    return _MODELS[key]


def _providers_loaded() -> list[str]:
    return [m.provider for m in _MODELS.values()]


def _restore_chunk(chunk: np.ndarray, *, version: ModelVersion, sha: str, provider: str | None,
                   threads: int | None, batch: int, tile_px: int | None, scale: PhotonScale | None,
                   ensemble: bool) -> np.ndarray:
    return restore_stack(_model(version, sha, provider, threads), chunk, batch=batch, tile_px=tile_px, scale=scale,
                         ensemble=ensemble)


def _refocus_chunk(chunk: np.ndarray, *, version: ModelVersion, sha: str, provider: str | None,
                   threads: int | None, batch: int, dz_um: np.ndarray, block_info: dict | None = None) -> np.ndarray:
    """The chunk's frames moved by their delta-z: one for all (--dz), or the sweep's planes
    ``first..`` that the chunk holds (dask's ``block_info`` says which frames it holds)."""
    first, stop = block_info[0]["array-location"][0]
    dz = np.full(stop - first, dz_um[0]) if len(dz_um) == 1 else dz_um[first:stop]
    return refocus_frames(_model(version, sha, provider, threads), chunk, dz, batch=batch)


def _write_block(frames: np.ndarray, array_path: str, first_frame: int) -> tuple[int, float, float]:
    write_zarr_frames(array_path, first_frame, frames)
    return len(frames), float(frames.min()), float(frames.max())
