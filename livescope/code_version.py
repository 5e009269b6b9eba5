"""Which code made a model or an output: the package version, and the git commit where livescope runs
from a checkout.

The package version alone does not change between commits, so a model card that says only "0.1.0"
cannot tell which training code made it (psf@1 was retrained after a later commit changed its
training path and nothing in its card showed it). From a git checkout the version gets a PEP 440
local part: ``0.1.0+g1a2b3c4d5e6f`` for a clean tree, ``...+g1a2b3c4d5e6f.dirty`` when tracked files
differ from that commit (the code that ran is then not any commit's). Code is the Python sources and
pyproject.toml (its pinned dependencies); changed data, documents or shipped models do not count.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from livescope import __version__

_CHECKOUT = Path(__file__).resolve().parent.parent
_COMMIT_DIGITS = 12
_CODE = ("*.py", "pyproject.toml")


def git_suffix(checkout: Path) -> str | None:
    """``g<commit>[.dirty]`` of the checkout at ``checkout``, or None where it is not one (an
    installed wheel) or git is missing."""
    if not (checkout / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no",
                                  "--", *_CODE], capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not commit:
        return None
    return f"g{commit[:_COMMIT_DIGITS]}" + (".dirty" if changed else "")


@functools.cache
def code_version() -> str:
    """The version recorded in model cards and outputs' provenance (once per process: a training run's
    code does not change under it)."""
    suffix = git_suffix(_CHECKOUT)
    return __version__ if suffix is None else f"{__version__}+{suffix}"
