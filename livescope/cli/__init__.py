"""The `livescope` command: one typer app built from the command modules, one per command group
(serve, acquire, offline, train, calibrate, models, report).

Each command imports its part lazily, so `serve` never loads torch and `--help` is instant. A
user's mistake ends in one line on stderr and a non-zero exit (`_common.fail`). Nothing imports
this package, and its modules import only `_common`, `_console` and the parts, never it.
"""

from __future__ import annotations

import sys

import typer

from livescope.cli import acquire, adapt, bioimage, calibrate, models, offline, psf, report, serve, train, view

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Deep-learning image restoration inside the microscope's acquisition loop.")
for command in (serve.serve, acquire.acquire, acquire.demo, offline.denoise, offline.restore, offline.localise,
                offline.refocus, psf.psf, models.status, report.report, adapt.adapt, view.view):
    app.command()(command)
models.models_app.command("export")(bioimage.models_export)
models.models_app.command("import")(bioimage.models_import)
app.add_typer(models.models_app, name="models")
app.add_typer(models.keys_app, name="keys")
app.add_typer(train.train_app, name="train")
app.add_typer(calibrate.calibrate_app, name="calibrate")


# Top-level modules of the optional extras -> how to install them (a plain install leaves them out)
_EXTRAS = {name: 'pip install torch==2.13.0 "livescope[train]"' for name in ("torch", "onnx", "onnxscript", "skimage")}
_EXTRAS["bioimageio"] = 'pip install "livescope[bioimage]"'
_EXTRAS |= {name: 'pip install "livescope[view]"' for name in ("napari", "qtpy", "PyQt6")}
_EXTRAS |= {name: 'pip install "livescope[cluster]"' for name in ("dask", "distributed")}
_EXTRAS |= {name: 'pip install "livescope[acquire]"' for name in ("pymmcore_plus", "pymmcore", "useq")}
_EXTRAS |= {name: 'pip install "livescope[zarr]"' for name in ("tensorstore", "ome_writers")}


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except ModuleNotFoundError as e:
        install = _EXTRAS.get((e.name or "").split(".")[0])
        if install is None:
            raise
        typer.echo(f"livescope: error: this command needs {e.name}, which the plain install leaves out: {install}",
                   err=True)
        sys.exit(2)
