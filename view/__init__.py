"""livescope in napari: `livescope view` shows a running server's streams live (raw and restored
frames, localisations and their super-resolution render, the stream's counters), and the napari
plugin (``napari.yaml``) opens livescope's outputs and runs a served model on a layer.

Needs the ``view`` extra (napari with a Qt binding). Imports the core only (the client, the
emitter tables, the render); the CLI is the only part that imports it.
"""
