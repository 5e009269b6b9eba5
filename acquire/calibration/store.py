"""A calibration session's folder while it is acquired: the manifest, the positions' stores,
and what is set aside.

Crash safety rests on three renames: a position is written under a hidden partial name
(``.p000.partial.ome.zarr``), renamed into place once complete and checksummed, and then the
manifest is replaced atomically (temp file + fsync + ``os.replace``) listing it. Whatever
stops a position on the way - an error, Ctrl-C, a full disk - its partial data is moved
under ``interrupted/`` and recorded; nothing acquired is ever deleted. A session stopped too
abruptly for that (power loss, SIGKILL) is tidied up the same way when it is resumed.
"""

from __future__ import annotations

import errno
import json
import os
import re
import uuid
from datetime import datetime
from pathlib import Path

from livescope.session import (
    INTERRUPTED_DIR,
    MANIFEST_FILE,
    CompletedPosition,
    InterruptedAttempt,
    SessionError,
    SessionManifest,
    file_checksums,
    read_manifest,
    store_name,
    utc_now,
)

_STORE = re.compile(r"^\.?p(\d{3,})(\.partial)?\.ome\.zarr$")


def write_bytes_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to the disk (the one place the session's own
    writes go through, so a full disk shows up here)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def replace_file_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: a reader sees the old file or the new one, whole
    (a temporary file, flushed to disk, renamed over it; removed if anything fails)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write_bytes_durably(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


class SessionStore:
    """The session folder ``root`` and its manifest, kept in step with each other."""

    def __init__(self, root: Path, manifest: SessionManifest) -> None:
        self.root = root
        self.manifest = manifest

    # -- opening ----------------------------------------------------------------------------------

    @classmethod
    def create(cls, root: Path, manifest: SessionManifest) -> SessionStore:
        """A new session folder holding only the manifest; refuses an existing ``root``."""
        if root.exists():
            raise SessionError(f"{root} already exists; add --resume to continue the session in it, "
                               "or choose another --output")
        if not root.parent.is_dir():
            raise SessionError(f"folder does not exist: {root.parent}")
        try:
            root.mkdir()
        except OSError as e:
            raise SessionError(f"cannot create {root}: {e.strerror or e}") from None
        store = cls(root, manifest)
        try:
            store.save()
        except OSError as e:
            for leftover in root.iterdir():  # only a temp manifest can be there
                leftover.unlink(missing_ok=True)
            root.rmdir()
            raise SessionError(f"cannot write the session manifest in {root}: {e.strerror or e}"
                               f"{' (the disk is full)' if is_disk_full(e) else ''}") from None
        return store

    @classmethod
    def reopen(cls, root: Path) -> SessionStore:
        """An existing session, for --resume: leftovers of an abrupt stop are set aside first."""
        if not root.exists():
            raise SessionError(f"nothing to resume: {root} does not exist (drop --resume to start it)")
        store = cls(root, read_manifest(root))
        missing = [d.path for d in store.manifest.completed if not (root / d.path).is_dir()]
        if missing:
            raise SessionError(f"session {root} is damaged: completed position {missing[0]} is missing; "
                               "start a new session")
        store.tidy()
        return store

    def tidy(self) -> None:
        """Set aside partial or unlisted position stores, and record unlisted set-aside data:
        what a session stopped without its own clean-up (power loss, SIGKILL) leaves."""
        listed = {d.path for d in self.manifest.completed}
        changed = False
        for entry in sorted(self.root.iterdir()):
            m = _STORE.match(entry.name)
            if m and entry.name not in listed and entry.is_dir():
                index = int(m[1])
                self._set_aside(entry, index, "found on resume: the session had stopped before this "
                                              "position was complete", None)
                changed = True
        recorded = {a.path for a in self.manifest.interrupted}
        aside = self.root / INTERRUPTED_DIR
        for entry in sorted(aside.iterdir()) if aside.is_dir() else ():
            rel = f"{INTERRUPTED_DIR}/{entry.name}"
            if rel not in recorded and (m := re.match(r"^p(\d{3,})\.", entry.name)):
                self._record(int(m[1]), rel, "found on resume: set aside, but not recorded (the "
                                             "manifest could not be written then)", None)
                changed = True
        if changed:
            self.save()

    # -- positions --------------------------------------------------------------------------------

    def partial_path(self, index: int) -> Path:
        """Where a position is written while it is acquired (hidden, still an .ome.zarr)."""
        return self.root / f".{store_name(index).removesuffix('.ome.zarr')}.partial.ome.zarr"

    def commit(self, index: int, *, name: str, xyz_um: tuple[float, float, float | None], axes: str,
               channels: tuple[str, ...], frame_count: int, started_at: datetime) -> CompletedPosition:
        """Checksum the finished partial store, rename it into place and list it in the
        manifest. If that fails (a full disk) it is set aside, and the OSError raised."""
        partial, final = self.partial_path(index), self.root / store_name(index)
        done = CompletedPosition(
            index=index, name=name, x_um=xyz_um[0], y_um=xyz_um[1], z_um=xyz_um[2], path=final.name,
            axes=axes, channels=channels, sha256=file_checksums(partial), frame_count=frame_count,
            started_at=started_at, finished_at=utc_now())
        os.replace(partial, final)
        self.manifest.completed.append(done)
        try:
            self.save()
        except BaseException as e:
            self.manifest.completed.remove(done)
            self.set_aside(index, f"the manifest could not be updated: {_describe(e)}", frame_count, final)
            raise
        return done

    def set_aside(self, index: int, reason: str, frames: int | None, path: Path | None = None) -> None:
        """Move a position's partial data (default: its partial store, if any) under
        interrupted/ and record the attempt; recording is best effort (the disk may be full:
        a resume records it then)."""
        path = path if path is not None else self.partial_path(index)
        if path.exists():
            self._set_aside(path, index, reason, frames)
        else:
            self._record(index, None, reason, frames)
        try:
            self.save()
        except OSError:
            pass

    def _set_aside(self, path: Path, index: int, reason: str, frames: int | None) -> None:
        aside = self.root / INTERRUPTED_DIR
        aside.mkdir(exist_ok=True)
        attempt = sum(1 for a in self.manifest.interrupted if a.index == index) + 1
        target = aside / f"p{index:03d}.attempt{attempt}-{uuid.uuid4().hex[:6]}.ome.zarr"
        os.replace(path, target)
        self._record(index, f"{INTERRUPTED_DIR}/{target.name}", reason, frames)

    def _record(self, index: int, rel: str | None, reason: str, frames: int | None) -> None:
        names = self.manifest.plan.positions
        name = names[index].name if index < len(names) else f"p{index:03d}"
        self.manifest.interrupted.append(InterruptedAttempt(
            index=index, name=name, path=rel, frames_acquired=frames, reason=reason, recorded_at=utc_now()))

    # -- the manifest -----------------------------------------------------------------------------

    def finish(self) -> None:
        self.manifest.complete = not self.manifest.remaining()
        self.save()

    def save(self) -> None:
        """Replace the manifest atomically: a reader sees the old one or the new one, whole."""
        self.manifest.updated_at = utc_now()
        replace_file_durably(self.root / MANIFEST_FILE, self.manifest.model_dump_json(indent=2).encode("utf-8"))


def stored_axes(store: Path) -> str:
    """The axes of an OME-Zarr written by pymmcore-plus (e.g. 'TCYX'), from its metadata."""
    try:
        meta = json.loads((store / "zarr.json").read_text(encoding="utf-8"))
        axes = meta["attributes"]["ome"]["multiscales"][0]["axes"]
        return "".join(a["name"] for a in axes).upper()
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise SessionError(f"{store}: not an OME-Zarr as pymmcore-plus writes it ({_describe(e)})") from None


def _describe(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__
