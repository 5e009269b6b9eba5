"""Does a model's documented command still make its file? Prints JSON.

Reruns the command the version's card records (``provenance.command``, a `livescope train ...`) with
``--models`` pointed at a scratch repository, then compares the new graph's weights with the version's,
tensor by tensor: bit-identical, or the largest difference. The card's ``code_version`` says which commit
trained the file (``0.1.0`` alone: not recorded); run this at that commit to check the command, and at
today's to check that nothing since changed what it trains. A full training run: minutes to hours.

    python bench/reproduce_model.py psf@1 [--models DIR]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from livescope.code_version import code_version
from livescope.repository import ModelRepository, UnknownModelError, shipped_models_root


def rerun_args(command: str, into: Path) -> list[str]:
    """The card's command as arguments of ``python -m livescope.cli``, writing into ``into``."""
    words = shlex.split(command)
    if words[:2] != ["livescope", "train"]:
        raise SystemExit(f"only `livescope train` commands are rerun; this card says: {command}")
    kept: list[str] = []
    skip = False
    for w in words[1:]:
        if skip:
            skip = False
        elif w == "--models":
            skip = True
        elif not w.startswith("--models="):
            kept.append(w)
    return [*kept, "--models", str(into)]


def weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def compare(shipped: dict[str, np.ndarray], rerun: dict[str, np.ndarray]) -> dict:
    same_layout = shipped.keys() == rerun.keys() and all(shipped[k].shape == rerun[k].shape for k in shipped)
    if not same_layout:
        return {"same_layout": False, "bit_identical": False, "max_abs_difference": None}
    diff = max((float(np.max(np.abs(shipped[k].astype(np.float64) - rerun[k].astype(np.float64))))
                for k in shipped if shipped[k].size), default=0.0)
    return {"same_layout": True, "bit_identical": all(np.array_equal(shipped[k], rerun[k]) for k in shipped),
            "max_abs_difference": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="NAME@VERSION")
    ap.add_argument("--models", type=Path, action="append", default=[], help="a repository besides the shipped one")
    args = ap.parse_args()
    name, _, version = args.model.partition("@")
    if not version.isdigit():
        raise SystemExit(f"name the version to rerun as NAME@VERSION, e.g. psf@1 (not {args.model!r})")
    try:
        target = ModelRepository([shipped_models_root(), *args.models]).resolve(name, int(version))
    except UnknownModelError as e:
        raise SystemExit(str(e)) from None
    with tempfile.TemporaryDirectory(prefix="livescope-reproduce-") as scratch:
        cmd = [sys.executable, "-m", "livescope.cli", *rerun_args(target.card.provenance.command, Path(scratch))]
        t0 = time.perf_counter()
        # exit 1 is a version that failed the quality gate: written all the same, and compared
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        written = sorted(Path(scratch).glob(f"{name}/*/model.onnx"))
        if not written:
            raise SystemExit(f"the command wrote no version of {name} (exit {done.returncode}): "
                             f"{(done.stderr.strip().splitlines() or ['no message'])[-1]}")
        result = compare(weights(target.onnx_path), weights(written[-1]))
    print(json.dumps({"benchmark": "reproduce_model", "model": target.ref,
                      "command": target.card.provenance.command,
                      "trained_by_code": target.card.provenance.code_version, "rerun_by_code": code_version(),
                      "rerun_seconds": round(seconds, 1), **result}, indent=2))


if __name__ == "__main__":
    main()
