"""careamics N2V2 as a comparison point: trains on a stack within a time budget, then predicts.

Not part of livescope and never imported by it. Runs with the python of a separate virtual
environment that holds careamics (see "Environment" below), for example:

    /work/careamics-venv/bin/python bench/careamics_n2v2.py --train train.npy \
        --predict test.npy --out pred.npy --report report.json --budget-seconds 300 --seed 0 \
        [--patch 64] [--batch-size 16] [--timing-size 512] [--predict-num-workers 0]
        [--work-dir DIR]

``--train`` holds noisy frames (T, H, W), uint16 or float (camera counts); ``--predict`` holds
frames (N, H, W) to denoise after training (may be the training frames: self-supervised on the
stack itself). ``--out`` receives float32 (N, H, W) predictions in the input's units: careamics
normalises with the training data's mean and std and denormalises its predictions; the script
checks that the prediction mean is close to the input mean and reports both.

What careamics does, with its defaults:
  * configuration from ``careamics.config.create_advanced_n2v_config`` (careamics 0.3.5 names
    its factories ``create_n2v_config`` / ``create_advanced_n2v_config`` and has no
    ``create_n2v_configuration``; the advanced one is needed for ``seed`` and
    ``trainer_params``). Only ``use_n2v2=True``, ``axes="SYX"``,
    ``patch_size``, ``batch_size``, ``num_epochs`` (very large: the time budget stops training),
    ``seed`` (careamics wants a seed > 0: it gets ``--seed`` + 1) and
    ``trainer_params={"max_time": ...}`` are set; everything else is careamics' default (UNet
    depth 2, 32 initial channels, batch norm, N2V2 = blur-pool + no top skip connection +
    median replacement, roi 11, 0.2 % masked pixels, x/y flips and 90 degree rotations,
    stratified patching, mean/std normalisation, Adam with torch's default lr 1e-3 and
    ReduceLROnPlateau, 8 validation patches, ``num_workers`` = careamics' platform default:
    min(cpu_count - 1, 4) on Linux).
  * ``CAREamist(source=config, work_dir=<temporary dir>)`` (0.3.5 calls the argument
    ``config``), ``train(train_data=...)`` and ``predict(...)``; tiled prediction with
    careamics' tiling (256 px tiles, careamics' default 48 px overlap) when a frame is larger
    than 256 px in either dimension.

Time budget: Lightning's ``Trainer(max_time=...)`` passed through careamics'
``trainer_params``. Lightning turns it into its ``Timer`` callback (interval "step"): the clock
starts at ``on_train_start`` (after data set-up, normalisation statistics and the sanity
validation pass) and training stops after the first optimizer step that ends past
``--budget-seconds``; the script's own callback also stops at an epoch end past the budget
(where the step-interval Timer does not look), so no new epoch starts. Validation passes inside
training count against the budget; the overshoot is at most one optimizer step plus one
validation pass. The callback measures the same interval (``train_seconds``) and the time from
``CAREamist`` construction to the start of training (``setup_seconds``: data module, normalisation
statistics, sanity validation; not counted against the budget).

Prediction timing: careamics' own ``CAREamist.predict`` on one exactly ``--timing-size`` square
image (cropped from the first prediction frame, or reflect-padded if the frames are smaller),
one warm-up call and the median of five. Every ``predict`` call builds a data module and has
Lightning reload careamics' checkpoint ("last"), which is part of that number. The timing
image follows the same tiling rule as the frames (so 512 px is tiled); when it is tiled,
``predict_ms_at_timing_size_untiled_median`` is the same call on the whole image (tiling with
overlap costs about twice as much), and ``forward_only_ms_at_timing_size_median`` is the bare
network (no normalisation, data module or checkpoint) for reference. Prediction uses
``num_workers=0`` (in-process loading) by default, which avoids starting a worker process per
call; training keeps careamics' default.

Environment (deviation from careamics' pins, stated plainly): careamics 0.3.5 requires
``torchvision<=0.26``, which needs torch 2.11; the only torch here is the CPU wheel
torch 2.13.0+cpu (/opt/wheels), so the environment has torch 2.13.0+cpu and torchvision 0.28.0
(the release paired with torch 2.13), installed with ``--no-deps`` (careamics itself too, with
its other dependencies installed explicitly within careamics' bounds). The only torchvision
0.28.0 wheel available is the CUDA build (``0.28.0+cu130``), whose compiled ops cannot load
against CPU torch, and torchvision then fails to import (it registers a fake kernel for
``torchvision::nms`` unconditionally). careamics only
imports torchvision's pure-Python ``transforms.functional`` (in its LVAE modules, not used by
N2V2), so before importing careamics this script declares the schemas of ``torchvision::nms``
and ``torchvision::qnms`` when, and only when, torchvision's ``_C`` library fails to load; no
torchvision operator is ever executed. With a matching CPU torchvision the shim is not used.
All other dependencies satisfy careamics' pins.

The environment is made by the commands in bench/README.md.

Input errors (missing file, not a .npy array, wrong shape or dtype, non-finite values, frames
smaller than the patch) are reported on one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

TILE_PX = 256  # frames larger than this (either dimension) are predicted with careamics tiling
TILE_OVERLAP_PX = 48  # careamics' default overlap for tiled prediction
TIMING_REPEATS = 5


class InputError(Exception):
    """A problem with the command line's files: reported on one line, exit status 2."""


def log(msg: str) -> None:
    print(f"[careamics_n2v2] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- inputs


def load_stack(path: str, flag: str, min_hw: int = 1) -> np.ndarray:
    """Load a (T, H, W) stack of real numbers as float32, or raise InputError."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{flag} {path}: no such file")
    with open(p, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise InputError(f"{flag} {path}: not a .npy file (no NumPy header)")
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any failure to read is an input error
        raise InputError(f"{flag} {path}: not a readable .npy array ({type(e).__name__}: {e})") from None
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{flag} {path}: expected a single .npy array, got {type(arr).__name__}")
    if arr.ndim != 3:
        raise InputError(f"{flag} {path}: expected shape (frames, height, width), got {arr.shape}")
    if arr.dtype.kind not in "uif":
        raise InputError(f"{flag} {path}: expected uint16 or float frames, got dtype {arr.dtype}")
    if 0 in arr.shape:
        raise InputError(f"{flag} {path}: empty array of shape {arr.shape}")
    if arr.shape[1] < min_hw or arr.shape[2] < min_hw:
        raise InputError(
            f"{flag} {path}: frames of {arr.shape[1]}x{arr.shape[2]} px are smaller than {min_hw} px"
        )
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise InputError(f"{flag} {path}: contains NaN or infinite values")
    return out


def timing_image(frames: np.ndarray, size: int) -> np.ndarray:
    """Exactly size x size from the first frame: a centre crop, reflect-padded where too small."""
    img = frames[0]
    h, w = img.shape
    y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
    img = img[y0 : y0 + size, x0 : x0 + size]
    while img.shape[0] < size or img.shape[1] < size:  # reflect needs pad < size: repeat
        ph, pw = min(size - img.shape[0], img.shape[0] - 1), min(size - img.shape[1], img.shape[1] - 1)
        if img.shape[0] == 1 or img.shape[1] == 1:
            img = np.pad(img, ((0, size - img.shape[0]), (0, size - img.shape[1])), mode="wrap")
            break
        img = np.pad(img, ((0, ph), (0, pw)), mode="reflect")
    img = np.ascontiguousarray(img[:size, :size], dtype=np.float32)
    assert img.shape == (size, size)
    return img


# ------------------------------------------------------------------------------- torchvision


_TORCHVISION_SHIM_LIB = None  # keeps the torch.library.Library alive


def torchvision_status() -> str:
    """Make ``import torchvision`` work with CPU torch when its compiled ops cannot load.

    Returns "native" (its _C library loads), "shim" (schemas declared, see module docstring)
    or "absent".
    """
    global _TORCHVISION_SHIM_LIB
    import importlib.util

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return "absent"
    pkg = Path(spec.origin).parent
    libs = sorted(pkg.glob("_C*.so")) + sorted(pkg.glob("_C*.pyd"))
    for lib in libs:
        try:
            torch.ops.load_library(str(lib))
            return "native"
        except (OSError, RuntimeError):
            pass
    lib = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 - schemas only, never run
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_SHIM_LIB = lib
    return "shim"


def quiet_careamics_loggers() -> None:
    """careamics' loggers do not propagate and print INFO/WARNING chatter per predict call."""
    from careamics.utils.logging import LOGGERS

    for name in set(LOGGERS) | set(logging.root.manager.loggerDict):
        if name in LOGGERS or name.startswith("careamics"):
            logging.getLogger(name).setLevel(logging.ERROR)


# ------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", required=True, help=".npy (T, H, W) noisy training frames")
    ap.add_argument("--predict", required=True, help=".npy (N, H, W) frames to denoise")
    ap.add_argument("--out", required=True, help=".npy float32 (N, H, W) predictions, input units")
    ap.add_argument("--report", required=True, help="JSON report")
    ap.add_argument("--budget-seconds", type=float, required=True, help="wall time for training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--patch", type=int, default=64, help="training patch size, px (multiple of 8)")
    ap.add_argument("--batch-size", type=int, default=16, help="training batch size")
    ap.add_argument("--timing-size", type=int, default=512, help="square image for predict timing")
    ap.add_argument(
        "--predict-num-workers", type=int, default=0,
        help="data-loader workers for predict() (default 0: in-process)",
    )
    ap.add_argument("--work-dir", default=None, help="careamics work dir (default: temporary)")
    args = ap.parse_args(argv)
    if args.seed < 0:
        ap.error("--seed must be >= 0")
    if args.budget_seconds <= 0:
        ap.error("--budget-seconds must be positive")
    if args.patch < 8 or args.patch % 8:
        ap.error("--patch must be a multiple of 8 and at least 8 (careamics' constraint)")
    if args.batch_size < 1 or args.timing_size < 8 or args.predict_num_workers < 0:
        ap.error("--batch-size, --timing-size and --predict-num-workers must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    args = parse_args(argv)
    try:
        for flag in ("--out", "--report"):
            parent = Path(getattr(args, flag[2:])).resolve().parent
            if not parent.is_dir():
                raise InputError(f"{flag}: directory {parent} does not exist")
        train = load_stack(args.train, "--train", min_hw=args.patch)
        pred_frames = load_stack(args.predict, "--predict")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t_loaded = time.perf_counter()
    log(f"train {train.shape}, predict {pred_frames.shape}, budget {args.budget_seconds:g} s")

    # quiet, offline, reproducible
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("WANDB_DISABLED", "true")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)

    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    tv_status = torchvision_status()

    import careamics
    import lightning
    import lightning.pytorch as pl
    from careamics import CAREamist
    from careamics.config import create_advanced_n2v_config

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    quiet_careamics_loggers()
    try:
        import torchvision

        tv_version = torchvision.__version__
    except Exception:  # noqa: BLE001
        tv_version = None
    pl.seed_everything(args.seed, workers=True, verbose=False)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    t_imported = time.perf_counter()

    class BudgetProbe(pl.Callback):
        """Times the training loop and counts epochs/steps; one stderr line per epoch."""

        def __init__(self) -> None:
            self.t0: float | None = None
            self.t1: float | None = None
            self.epochs = 0
            self.steps = 0

        def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
            self.epochs = trainer.current_epoch + 1
            # Lightning's Timer (interval "step") checks only after optimizer steps: do not
            # start another epoch once the budget is spent
            if time.perf_counter() - self.t0 >= args.budget_seconds:
                trainer.should_stop = True
            loss = trainer.callback_metrics.get("train_loss_epoch", trainer.callback_metrics.get("train_loss"))
            log(
                f"epoch {self.epochs}  steps {trainer.global_step}  "
                f"{time.perf_counter() - self.t0:6.1f} s"
                + (f"  train_loss {float(loss):.4f}" if loss is not None else "")
            )

        def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
            self.t1 = time.perf_counter()
            self.steps = trainer.global_step

    config = create_advanced_n2v_config(
        experiment_name="careamics_n2v2_bench",
        data_type="array",
        axes="SYX",
        patch_size=[args.patch, args.patch],
        batch_size=args.batch_size,
        num_epochs=1_000_000,  # the time budget ends training
        use_n2v2=True,
        seed=args.seed + 1,  # careamics requires a seed > 0
        logger="none",
        trainer_params={
            "max_time": {"milliseconds": int(round(args.budget_seconds * 1000))},
            "enable_model_summary": False,  # output only; the network is careamics' default
        },
    )
    tmp = None
    if args.work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="careamics_n2v2_")
        work_dir = Path(tmp.name)
    else:
        work_dir = Path(args.work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)

    try:
        probe = BudgetProbe()
        t_setup0 = time.perf_counter()
        careamist = CAREamist(config, work_dir=work_dir, callbacks=[probe], enable_progress_bar=False)
        unet = careamist.model.model
        mcfg = config.algorithm_config.model
        network = {
            "architecture": mcfg.architecture,
            "depth": mcfg.depth,
            "num_channels_init": mcfg.num_channels_init,
            "channels_per_level": [mcfg.num_channels_init * 2**i for i in range(mcfg.depth + 1)],
            "n2v2": mcfg.n2v2,
            "use_batch_norm": mcfg.use_batch_norm,
            "residual": mcfg.residual,
            "final_activation": str(mcfg.final_activation),
            "parameters": int(sum(p.numel() for p in unet.parameters())),
            "n2v_strategy": str(config.algorithm_config.n2v_config.strategy),
            "roi_size": config.algorithm_config.n2v_config.roi_size,
            "masked_pixel_percentage": config.algorithm_config.n2v_config.masked_pixel_percentage,
            "optimizer": config.algorithm_config.optimizer.name,
            "optimizer_parameters": dict(config.algorithm_config.optimizer.parameters)
            or "torch defaults (Adam lr 1e-3)",
            "lr_scheduler": config.algorithm_config.lr_scheduler.name,
            "normalization": config.data_config.normalization.name,
            "augmentations": [t.name for t in config.data_config.augmentations],
            "patching": config.data_config.patching.name,
            "n_val_patches": config.data_config.n_val_patches,
            "train_num_workers": config.data_config.num_workers,
        }
        log(
            f"careamics {careamics.__version__}: N2V2 UNet depth {mcfg.depth}, "
            f"{mcfg.num_channels_init} channels, {network['parameters']:,} parameters; "
            f"torch {torch.__version__} ({threads} threads), torchvision {tv_version} ({tv_status})"
        )

        t_train_call = time.perf_counter()
        careamist.train(train_data=train)
        t_train_done = time.perf_counter()
        if probe.t0 is None or probe.t1 is None:
            raise RuntimeError("training did not run (no on_train_start/on_train_end)")
        train_seconds = probe.t1 - probe.t0
        setup_seconds = probe.t0 - t_setup0
        log(f"trained {train_seconds:.1f} s ({probe.epochs} epochs, {probe.steps} steps)")

        # careamics predicts N2V with its "last" checkpoint; make sure that holds the final
        # weights (the budget can stop training between checkpoint saves)
        last_path = next(
            (cb.last_model_path for cb in careamist.trainer.checkpoint_callbacks if cb.last_model_path), ""
        )
        last_step = (
            int(torch.load(last_path, map_location="cpu", weights_only=False)["global_step"])
            if last_path
            else None
        )
        predict_ckpt = None  # careamics' default: "last"
        if last_step != probe.steps:
            final = work_dir / "final_weights.ckpt"
            careamist.trainer.save_checkpoint(final)
            predict_ckpt = str(final)
            log(f"'last' checkpoint is from step {last_step}: predicting with the final weights")
        ckpt_note = "careamics default 'last'" if predict_ckpt is None else (
            f"final weights saved after training ('last' was from step {last_step})"
        )

        # ------------------------------------------------------------------ predict frames
        n, h, w = pred_frames.shape
        tiled = max(h, w) > TILE_PX

        def predict_kwargs(tile: bool) -> dict:
            kw = {"axes": "SYX", "num_workers": args.predict_num_workers, "checkpoint": predict_ckpt}
            if tile:
                kw.update(tile_size=(TILE_PX,) * 2, tile_overlap=(TILE_OVERLAP_PX,) * 2)
            return kw

        t0 = time.perf_counter()
        preds, _ = careamist.predict(pred_frames, **predict_kwargs(tiled))
        predict_seconds = time.perf_counter() - t0
        out = np.squeeze(np.concatenate([np.asarray(p) for p in preds], axis=0))
        if out.ndim == 2:
            out = out[None]
        if out.shape != pred_frames.shape:
            raise RuntimeError(f"careamics returned {out.shape}, expected {pred_frames.shape}")
        out = out.astype(np.float32, copy=False)
        np.save(args.out, out)
        in_mean, out_mean = float(pred_frames.mean()), float(out.mean())
        in_std = float(pred_frames.std())
        # careamics denormalises in N2VModule.predict_step; an untrained network (tiny budget,
        # batch-norm running statistics not settled) can still shift the mean somewhat
        units_ok = abs(out_mean - in_mean) <= 0.1 * max(in_std, 1e-6) + 0.05 * abs(in_mean)
        log(
            f"predicted {n} frames in {predict_seconds:.2f} s (tiled={tiled}); "
            f"mean input {in_mean:.3f}, prediction {out_mean:.3f}"
        )
        if not units_ok:
            log(
                f"WARNING: prediction mean differs from the input mean by {out_mean - in_mean:+.3f} "
                f"(input std {in_std:.3f}): too little training, or output not in input units"
            )

        # ------------------------------------------------------------------ timing
        s = args.timing_size
        img = timing_image(pred_frames, s)[None]  # (1, S, S), axes SYX

        def time_predict(tile: bool) -> list[float]:
            kw = predict_kwargs(tile)
            times = []
            for i in range(1 + TIMING_REPEATS):  # one warm-up call, then the timed ones
                t0 = time.perf_counter()
                res, _ = careamist.predict(img, **kw)
                dt = (time.perf_counter() - t0) * 1000.0
                if i:
                    times.append(dt)
            shape = np.squeeze(np.asarray(res[0])).shape
            if shape != (s, s):
                raise RuntimeError(f"timing prediction returned {shape}, expected {(s, s)}")
            return times

        timing_tiled = s > TILE_PX  # the same rule as for the --predict frames
        times = time_predict(timing_tiled)
        timing_ms = float(statistics.median(times))
        # whole-image predict as well when the rule tiles (tiling with overlap costs extra)
        times_untiled = time_predict(False) if timing_tiled else times
        untiled_ms = float(statistics.median(times_untiled))

        # bare network forward on the same image (no normalisation, data module, checkpoint)
        unet = careamist.model.model
        unet.eval()
        x = torch.from_numpy(img[None])  # (1, 1, S, S)
        fwd = []
        with torch.inference_mode():
            for i in range(1 + TIMING_REPEATS):
                t0 = time.perf_counter()
                unet(x)
                if i:
                    fwd.append((time.perf_counter() - t0) * 1000.0)
        fwd_ms = float(statistics.median(fwd))
        log(
            f"predict() {s}x{s}: median {timing_ms:.1f} ms (tiled={timing_tiled}); "
            f"untiled {untiled_ms:.1f} ms; forward only {fwd_ms:.1f} ms"
        )

        report = {
            "method": "careamics N2V2",
            "versions": {
                "careamics": careamics.__version__,
                "torch": torch.__version__,
                "torchvision": tv_version,
                "torchvision_ops": tv_status,
                "lightning": lightning.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
            "api": "careamics.config.create_advanced_n2v_config(use_n2v2=True, axes='SYX', ...) + "
            "CAREamist(config, work_dir=tmp).train/predict",
            "budget_seconds": args.budget_seconds,
            "budget_enforcement": (
                "Lightning Trainer(max_time) via careamics trainer_params -> Lightning Timer "
                "callback (interval=step): clock starts at on_train_start (after data setup and "
                "sanity validation), training stops after the first optimizer step ending past "
                "the budget; this script's callback also stops at an epoch end past the budget "
                "(no new epoch starts). Validation inside training counts against the budget; "
                "overshoot <= one optimizer step + one validation pass"
            ),
            "train_seconds": round(train_seconds, 3),
            "train_call_seconds": round(t_train_done - t_train_call, 3),
            "setup_seconds": round(setup_seconds, 3),
            "import_seconds": round(t_imported - t_loaded, 3),
            "load_seconds": round(t_loaded - t_start, 3),
            "epochs": probe.epochs,
            "steps": probe.steps,
            "network": network,
            "patch_px": args.patch,
            "batch_size": args.batch_size,
            "train_shape": list(train.shape),
            "train_dtype": str(np.load(args.train, mmap_mode="r").dtype),
            "predict_shape": list(pred_frames.shape),
            "predict_tiled": tiled,
            "tile_px": TILE_PX if tiled else None,
            "tile_overlap_px": TILE_OVERLAP_PX if tiled else None,
            "predict_num_workers": args.predict_num_workers,
            "predict_checkpoint": ckpt_note,
            "predict_seconds": round(predict_seconds, 3),
            "predict_ms_per_frame": round(predict_seconds * 1000.0 / n, 3),
            "predict_ms_at_timing_size_median": round(timing_ms, 3),
            "predict_ms_at_timing_size_all": [round(t, 3) for t in times],
            "predict_tiled_at_timing_size": timing_tiled,
            "predict_ms_at_timing_size_untiled_median": round(untiled_ms, 3),
            "forward_only_ms_at_timing_size_median": round(fwd_ms, 3),
            "timing_size_px": s,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            # a shared machine: other processes' load distorts timings (threads wait for cores)
            "loadavg_1_5_15_at_start": [round(v, 2) for v in load_start],
            "loadavg_1_5_15_at_end": [round(v, 2) for v in os.getloadavg()],
            "input_mean": in_mean,
            "prediction_mean": out_mean,
            "input_std": in_std,
            "prediction_std": float(out.std()),
            "prediction_mean_close_to_input": bool(units_ok),
            "seed": args.seed,
            "careamics_seed": args.seed + 1,
        }
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {args.out} and {args.report}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
