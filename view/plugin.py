"""The napari plugin (``napari.yaml``): opens livescope's outputs and runs a served model on a layer.

- A restored OME-Zarr / OME-TIFF that livescope wrote opens as two layers, its raw twin (the
  ``source`` its provenance names, when it is still there) and the restored data, in µm; a
  localisation CSV (ThunderSTORM's format) opens as points (frame, y, x in µm). Anything else is left
  to other readers.
- "Run a livescope model" sends the selected image layer's frames to a running server and adds the
  result as a layer named after the model@version that made it (a real client: any model the server
  serves, on any machine).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from livescope.provenance import Provenance
from livescope.stackio import Stack, StackError, read_provenance, read_stack

THUNDERSTORM_COLUMNS = ('"id"', '"frame"', '"x [nm]"', '"y [nm]"')


def get_reader(path: str | list[str]):
    """napari's reader hook: a function reading ``path``, or None when it is not livescope's."""
    if isinstance(path, list):
        return None
    p = Path(path)
    if p.suffix.lower() == ".csv":
        with open(p, encoding="utf-8") as f:
            header = f.readline().strip()
        return _read_localisations if header.startswith(",".join(THUNDERSTORM_COLUMNS)) else None
    return _read_restored if read_provenance(p) is not None else None  # its metadata, not its pixels


def _image_layer(stack: Stack, role: str) -> tuple:
    info = stack.info
    data = stack.frames.reshape(info.shape)
    px = info.pixel_size_um or 1.0
    scale = [1.0] * (data.ndim - 2) + [px, px]
    if "Z" in info.axes and info.z_step_um:
        scale[info.axes.index("Z")] = info.z_step_um
    # napari puts a pixel's centre at index x scale; livescope's emitters (and physical positions) count
    # from the image's corner, so pixel i's centre is at (i + 1/2) px: half a pixel across and down
    translate = [0.0] * (data.ndim - 2) + [px / 2, px / 2]
    made = info.provenance
    name = f"{Path(info.path).name} ({role}{', ' + made.model_of(0) if made and made.model_of(0) else ''})"
    metadata = {"livescope": made.model_dump(mode="json") if made else None, "axes": info.axes}
    return data, {"name": name, "scale": scale, "translate": translate, "metadata": metadata}, "image"


def _read_restored(path: str) -> list[tuple]:
    restored = read_stack(path)
    made = restored.info.provenance
    layers = []
    raw = Path(made.source) if made is not None and made.source else None
    if raw is not None and raw.exists():
        try:
            layers.append(_image_layer(read_stack(raw), "raw"))
        except StackError:
            pass  # the raw twin moved or changed: the restored data still opens
    layers.append(_image_layer(restored, "restored"))
    return layers


def _read_localisations(path: str) -> list[tuple]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    points = np.array([[float(r["frame"]) - 1, float(r["y [nm]"]) / 1000, float(r["x [nm]"]) / 1000] for r in rows],
                      np.float32).reshape(-1, 3)
    made = Provenance.of_table(Path(path))
    name = f"{Path(path).name} ({made.model_of(0) if made and made.model_of(0) else 'localisations'})"
    return [(points, {"name": name, "size": 0.05, "face_color": "yellow", "border_width": 0,
                      "metadata": {"livescope": made.model_dump(mode="json") if made else None}}, "points")]


def run_model_widget(napari_viewer):
    """The dock widget: a server, a model (NAME or NAME@V), and a button that sends the selected
    image layer's frames to it and adds what comes back."""
    from qtpy.QtWidgets import QFormLayout, QLabel, QLineEdit, QPushButton, QWidget

    widget = QWidget()
    form = QFormLayout(widget)
    widget.server = QLineEdit("tcp://127.0.0.1:5760")
    widget.model = QLineEdit("denoise")
    widget.status = QLabel("")
    widget.status.setWordWrap(True)
    widget.button = QPushButton("Run on the selected layer")
    form.addRow("server", widget.server)
    form.addRow("model", widget.model)
    form.addRow(widget.button)
    form.addRow(widget.status)
    widget.button.clicked.connect(lambda: _run_on_layer(napari_viewer, widget))
    return widget


def _run_on_layer(viewer, widget) -> None:
    from livescope.client import Refusal, StreamClient

    layer = viewer.layers.selection.active
    if layer is None or layer.__class__.__name__ != "Image" or layer.data.ndim < 2:
        widget.status.setText("select an image layer first")
        return
    data = np.asarray(layer.data)
    frames = data.reshape(-1, *data.shape[-2:])
    if frames.dtype not in (np.uint8, np.uint16, np.float32):
        frames = frames.astype(np.float32)
    try:
        with StreamClient(widget.server.text(), pipeline=[widget.model.text()]) as client:
            client.connect()
            for frame in frames:
                client.submit(np.ascontiguousarray(frame))
            outcomes = sorted(client.outcomes(), key=lambda o: o.seq)
    except Exception as e:  # an unreachable server, a refused pipeline: said in the widget, napari goes on
        widget.status.setText(f"failed: {e}")
        return
    refused = [o for o in outcomes if isinstance(o, Refusal)]
    if refused or len(outcomes) != len(frames):
        widget.status.setText(f"{len(refused)} of {len(frames)} frames refused: "
                              f"{refused[0].message if refused else 'no answer'}")
        return
    out = np.stack([np.asarray(o.data) for o in outcomes]).reshape(data.shape)
    model = outcomes[0].header.model
    viewer.add_image(out, name=f"{layer.name} ({model})", scale=layer.scale, translate=layer.translate)
    widget.status.setText(f"{len(frames)} frames restored by {model}")
