"""Loaded models: an onnxruntime session per model version, checked against its card.

``LoadedModel.run`` takes a batch of frames as the camera's integers and returns the model's
output; padding to the card's size multiple happens here, casting and scaling in the graph.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from livescope.modelcard import ModelCard
from livescope.protocol import split_stage
from livescope.repository import ModelRepository, ModelVersion, UnknownModelError
from livescope.server.buffers import BufferPool
from livescope.server.providers import RuntimeOptions, create_session
from livescope.server.tiling import is_out_of_memory, run_shrinking_on_oom, smaller_tile
from livescope.validation import first_line

_ORT_DTYPES = {"tensor(uint16)": "uint16", "tensor(uint8)": "uint8", "tensor(float)": "float32"}


class ModelLoadError(RuntimeError):
    """The model cannot be served: a corrupt graph, or a card that disagrees with it."""


def check_card_against_graph(card: ModelCard, sess: ort.InferenceSession) -> None:
    for kind, specs, args in (("input", card.inputs, sess.get_inputs()),
                              ("output", card.outputs, sess.get_outputs())):
        got = {a.name: a for a in args}
        if set(got) != {s.name for s in specs}:
            raise ModelLoadError(
                f"{card.ref}: card {kind}s {[s.name for s in specs]} but graph has {list(got)}")
        for spec in specs:
            arg = got[spec.name]
            dtype = _ORT_DTYPES.get(arg.type, arg.type)
            if dtype != spec.dtype:
                raise ModelLoadError(f"{card.ref}: {kind} {spec.name!r} is {dtype} in the graph "
                                     f"but {spec.dtype} in the card")
            if len(arg.shape) != len(spec.axes):
                raise ModelLoadError(f"{card.ref}: {kind} {spec.name!r} has rank {len(arg.shape)} "
                                     f"in the graph but axes {spec.axes!r} in the card")


@dataclass
class LoadedModel:
    version: ModelVersion
    session: ort.InferenceSession
    provider: str
    load_seconds: float
    _pool: BufferPool = field(default_factory=BufferPool)
    # the first output's (channels, *spatial) as the graph declares them (ints, or names for sizes that
    # follow the input); None: not run with IO binding
    _out_dims: tuple | None = None
    _tile_px: int | None = None  # set once the whole frame did not fit in memory

    @property
    def card(self) -> ModelCard:
        return self.version.card

    @property
    def ref(self) -> str:
        return self.version.ref

    @classmethod
    def load(cls, version: ModelVersion, options: RuntimeOptions = RuntimeOptions(), *,
             warmup_shape: tuple[int, int] = (64, 64)) -> LoadedModel:
        t0 = time.perf_counter()
        try:
            sess, used = create_session(version.onnx_path, options)
        except Exception as e:
            raise ModelLoadError(f"{version.ref}: cannot load {version.onnx_path}: "
                                 f"{first_line(e)}") from None
        check_card_against_graph(version.card, sess)
        model = cls(version, sess, used, 0.0)
        out = sess.get_outputs()[0]
        if version.card.outputs[0].axes == "NCYX" and isinstance(out.shape[1], int):
            model._out_dims = tuple(out.shape[1:])
        # Warm-up so the first real frame does not pay for lazy initialisation.
        given = sess.get_inputs()[0].shape
        channels = given[1] if len(given) == 4 and isinstance(given[1], int) else 1
        model.run_windows(np.zeros((1, channels, *warmup_shape), dtype=version.card.inputs[0].dtype))
        model.load_seconds = time.perf_counter() - t0
        return model

    def run_frames(self, frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Frames of any size: whole while they fit, else in tiles with the card's halo.

        ``frames`` is (N, H, W) for image models, giving (N, H, W); or (N, C, H, W) windows
        (localisation: C consecutive frames per item), giving the model's (N, C', H, W) maps.
        Tiles are used for models with a fixed input size, and after the device ran out of
        memory on a whole frame (the tile size that worked is kept for the next frames).
        ``out``: an (N, H, W) array the result may be written into directly (a frame's slot in its
        sender's shared memory); whether it was is up to the model (tiles, padding): compare.
        """
        t = self.card.tiling
        run = self.run if frames.ndim == 3 else self.run_windows
        if self._out_dims is not None and all(isinstance(d, int) for d in self._out_dims[1:]):
            return run(frames)  # one estimate per window (psf): its tiles would not stitch into one
        fixed = t.tile_px is not None
        if not fixed and self._tile_px is None:
            try:
                return self.run(frames, out) if out is not None and frames.ndim == 3 else run(frames)
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                whole = max(frames.shape[-2:]) + (-max(frames.shape[-2:])) % t.size_multiple_px
                self._tile_px = smaller_tile(whole, halo_px=t.halo_px,
                                             size_multiple_px=t.size_multiple_px)
                if self._tile_px is None:
                    raise
        out, used = run_shrinking_on_oom(
            run, frames, tile_px=t.tile_px or self._tile_px, halo_px=t.halo_px,
            size_multiple_px=t.size_multiple_px, fixed_size=fixed, name=self.ref)
        if not fixed:
            self._tile_px = used
        return out

    def run(self, frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(N, H, W) frames -> (N, H, W) output of an image model's first output, in one call."""
        return self.run_windows(frames[:, None], None if out is None else out[:, None])[:, 0]

    def run_windows(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(N, C, H, W) -> the first output (N, C', H, W), in one call (padded to the size
        multiple by reflection, cropped back); into ``out`` where it fits the output exactly."""
        n, _, h, w = x.shape
        if self.card.inputs[0].dtype == "float32" and x.dtype.kind == "u":  # camera integers: exact in float32
            x = x.astype(np.float32)
        m = self.card.tiling.size_multiple_px
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect")
        if ph or pw:
            out = None  # the padded output is cropped: it cannot land in place
        result = self._run_bound(x, out) if self._out_dims else \
            self.session.run(None, {self.card.inputs[0].name: x})[0]
        return result[:, :, :h, :w]

    def _run_bound(self, x: np.ndarray, given: np.ndarray | None = None) -> np.ndarray:
        """Run with IO binding into ``given`` if it is the output's shape and type, else a recycled
        output buffer (no fresh 8 MB per 2k frame)."""
        spec = self.card.outputs[0]
        # a fixed size where the graph declares one (a per-tile estimate's [N, C, 1, 1]), else the input's
        spatial = tuple(d if isinstance(d, int) else n for d, n in zip(self._out_dims[1:], x.shape[2:]))
        shape = (x.shape[0], self._out_dims[0], *spatial)
        fits = given is not None and given.shape == shape and given.dtype == np.dtype(spec.dtype) \
            and given.flags.c_contiguous and given.flags.writeable
        out = given if fits else self._pool.get(shape, spec.dtype)
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.card.inputs[0].name, np.ascontiguousarray(x))
        binding.bind_output(spec.name, "cpu", 0, out.dtype, out.shape, out.ctypes.data)
        self.session.run_with_iobinding(binding)
        return out


@dataclass
class ModelRegistry:
    """The models the server can run: loaded sessions and the active version of each name.

    Thread-safe. The I/O thread resolves stage names to versions (cheap, never loads); the
    workers and control requests load versions (slow, outside the lock). A name's active version
    is pinned when first used (its newest then) and changes only through ``activate``, so new
    versions appearing in the repository never swap a model implicitly. With several ``workers``
    each has its own session of a version (``worker_options``: its GPU, or its share of the cores);
    the active versions are the server's.
    """

    repository: ModelRepository
    options: RuntimeOptions = RuntimeOptions()
    workers: int = 1
    gpus: int = 1  # devices the workers are spread over (worker i on GPU i mod gpus)
    _loaded: dict[tuple[str, int], LoadedModel] = field(default_factory=dict)  # (ref, worker) -> model
    _active: dict[str, int] = field(default_factory=dict)
    # name -> the versions it served before its active one, oldest first: what rollback returns to
    _history: dict[str, list[int]] = field(default_factory=dict)
    _loading: dict[tuple[str, int], threading.Lock] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def resolve(self, stage: str) -> ModelVersion:
        """The version a stage ('denoise' = the active version, or 'denoise@2') runs."""
        name, version = split_stage(stage)
        with self._lock:
            active = self._active.get(name)
            resolved = self.repository.resolve(name, active if version is None else version)
            if version is not None and version != active:
                _check_gate(resolved)  # a candidate serves only once activated by force
            self._active.setdefault(name, resolved.card.version)
            return resolved

    def active(self, name: str) -> int | None:
        with self._lock:
            return self._active.get(name)

    def worker_options(self, worker: int) -> RuntimeOptions:
        """A worker's session options: its GPU, and on the CPU its share of the cores (unless given)."""
        if self.workers == 1:
            return self.options
        threads = self.options.intra_op_threads or max(1, (os.cpu_count() or 1) // self.workers)
        return self.options.model_copy(update={"device_id": worker % max(1, self.gpus),
                                               "intra_op_threads": threads})

    def load(self, version: ModelVersion, worker: int = 0) -> LoadedModel:
        """A worker's loaded model of a version, loading it now if needed (may take seconds)."""
        key = (version.ref, worker)
        with self._lock:
            model = self._loaded.get(key)
            if model is not None:
                return model
            ref_lock = self._loading.setdefault(key, threading.Lock())
        with ref_lock:  # one load per version and worker, however many ask at once
            with self._lock:
                if key in self._loaded:
                    return self._loaded[key]
            model = LoadedModel.load(version, self.worker_options(worker))
            with self._lock:
                self._loaded[key] = model
            return model

    def load_everywhere(self, version: ModelVersion) -> LoadedModel:
        """Load a version for every worker (worker 0's model returned): a version made active is
        ready on all of them before the first frame reaches it."""
        models = [self.load(version, worker) for worker in range(self.workers)]
        return models[0]

    def fall_back_to_cpu(self, version: ModelVersion, worker: int = 0) -> LoadedModel:
        """Replace a worker's session of a version by a CPU one (its device ran out of memory)."""
        options = self.worker_options(worker).model_copy(update={"provider": "cpu"})
        model = LoadedModel.load(version, options)
        with self._lock:
            self._loaded[(version.ref, worker)] = model
        return model

    def activate(self, ref: str, *, force: bool = False) -> LoadedModel:
        """Load ``name@version`` completely, then make it the active version atomically.

        Frames already resolved keep the version they were resolved to; if loading fails, the
        previous active version stays in service. A version that failed the quality gate is
        activated only with ``force``.
        """
        name, version = split_stage(ref)
        resolved = self.repository.resolve(name, version)
        if not force:
            _check_gate(resolved)
        model = self.load_everywhere(resolved)
        with self._lock:
            previous = self._active.get(name)
            if previous is not None and previous != model.card.version:
                self._history.setdefault(name, []).append(previous)
            self._active[name] = model.card.version
        return model

    def rollback(self, name: str) -> tuple[LoadedModel, int]:
        """Serve again the version ``name`` served before its active one (loaded completely first;
        if that fails, the active version stays). Returns it and the version it replaced. It was
        served before, so the quality gate does not stop it (it passed, or was forced then)."""
        with self._lock:
            history, current = list(self._history.get(name, ())), self._active.get(name)
        while history and history[-1] == current:
            history.pop()
        if not history or current is None:
            served = f"it has served only {name}@{current}" if current is not None else f"{name} has not served yet"
            raise LookupError(f"no earlier version of {name} was active in this server since it started ({served}); "
                              f"`livescope models activate {name}@VERSION` picks one")
        model = self.load_everywhere(self.repository.resolve(name, history[-1]))
        with self._lock:
            if self._active.get(name) != current:
                raise LookupError(f"{name} was activated by someone else meanwhile; nothing rolled back")
            self._history[name] = history[:-1]
            self._active[name] = model.card.version
        return model, current

    def unload(self, ref: str) -> None:
        name, version = split_stage(ref)
        if version is None:
            raise ValueError(f"unload needs NAME@VERSION, got {ref!r}")
        with self._lock:
            if self._active.get(name) == version:
                raise ValueError(f"{ref} is active; activate another version of {name} first")
            removed = [self._loaded.pop(key) for key in list(self._loaded) if key[0] == ref]
            if not removed:
                raise ValueError(f"{ref} is not loaded")

    def preload(self) -> list[str]:
        """Activate, for every name, the newest version that loads; return the problems.

        A broken new version (corrupt graph, card that disagrees) must not take its stage out
        of service: the next older one that loads is served instead, and the problem reported.
        """
        problems = []
        for name in self.repository.names():
            for version in reversed(self.repository.versions(name)):
                if not version.card.serves_by_default:
                    continue  # a candidate: never served unless activated by force
                try:
                    self.activate(version.ref)
                    break
                except (ModelLoadError, UnknownModelError) as e:
                    problems.append(str(e))
        return problems

    def loaded(self) -> list[LoadedModel]:
        """One loaded model per version (the lowest worker's)."""
        with self._lock:
            first: dict[str, LoadedModel] = {}
            for (ref, _), model in sorted(self._loaded.items(), key=lambda item: item[0][1]):
                first.setdefault(ref, model)
            return list(first.values())


class CandidateVersionError(UnknownModelError):
    """A version that failed the quality gate, asked for without force."""


def _check_gate(version: ModelVersion) -> None:
    if not version.card.serves_by_default:
        raise CandidateVersionError(
            f"{version.ref} is a candidate that failed the quality gate ({version.card.gate.reason}); "
            f"`livescope models activate {version.ref} --force` serves it anyway")
