"""Loading a benchmark script of bench/ (not a package) as a module, for the tests of its parts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench_script(file_name: str) -> ModuleType:
    """bench/``file_name`` as the module ``bench_<its stem>``."""
    sys.path.insert(0, str(BENCH))  # the script imports its siblings (_common, ...)
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{Path(file_name).stem}", BENCH / file_name)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module
