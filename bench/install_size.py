"""How much a fresh virtual environment grows for each way of installing livescope.

    python bench/install_size.py [--extras "" acquire gpu] [--json docs/figures/install_size.json]

Each install goes into a new venv (``python -m venv``, pip as it comes) from this checkout, from
whatever index pip is configured for; the size is ``du`` of the whole venv, so pip itself and the
interpreter's links count, as they do on a user's disk. The largest packages of each are listed so a
growth can be traced to what brought it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _mb(path: Path) -> float:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) / 1024


def _largest(site: Path, n: int = 8) -> dict[str, float]:
    sizes = {p.name: _mb(p) for p in site.iterdir() if p.is_dir() and not p.name.endswith(".dist-info")}
    return {k: round(v, 1) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:n]}


def measure(extra: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        empty_mb = _mb(venv)
        target = f"{ROOT}[{extra}]" if extra else str(ROOT)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", target], check=True,
                       capture_output=True)
        (site,) = (venv / "lib").glob("python*/site-packages")
        return {"extra": extra or "(plain)", "empty_venv_mb": round(empty_mb, 1),
                "installed_venv_mb": round(_mb(venv), 1), "largest_mb": _largest(site)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extras", nargs="*", default=["", "acquire"], help='extras to measure; "" = plain')
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    rows = [measure(e) for e in args.extras]
    text = json.dumps({"installs": rows}, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
