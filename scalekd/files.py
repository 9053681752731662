"""Files that are never seen half-written: written under a temporary name in their own folder,
flushed to the disk, renamed onto the real name, and the folder flushed too (so that the rename
itself survives a crash). A reader finds the old file or the new one, never a mix; a failed write
leaves nothing under the real name. What a run must never show half-done goes through here: the
run's recipe.json, metrics.json and FINISHED, the export, checkpoint markers, probe.json, a teacher
cache's index and shards, `scalekd mix` images and manifest, .beton files, the ONNX export; and
whole folders another library writes (the timm export folder), swapped in."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

TMP_PREFIX = ".tmp-"  # a file being written; a kill mid-write leaves it, the next write replaces it


def temporary_name(path: Path) -> Path:
    return path.with_name(TMP_PREFIX + path.name)


def write_atomically(path: Path | str, write: Callable[[Path], None]) -> Path:
    """`write(tmp)`, then publish it as `path`; an error removes the temporary file."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        publish(tmp, path)
    except Exception:  # not on KeyboardInterrupt: a kill leaves the file just as well
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: Path | str, text: str) -> Path:
    return write_atomically(path, lambda tmp: tmp.write_text(text))


def write_folder_atomically(path: Path | str, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` a whole folder (another library's writer, e.g. timm's save_for_hf), flush
    its files, then swap it in for `path` (the previous folder renamed aside first: a rename
    cannot replace a non-empty folder); an error leaves the previous folder, or none, never a
    half one."""
    path = Path(path)
    tmp, old = temporary_name(path), path.with_name(f".old-{path.name}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                _flush(file)
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        sync_folder(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def publish(tmp: Path, path: Path) -> None:
    """Flush the finished file `tmp` to the disk and rename it onto `path` (same folder)."""
    _flush(tmp)
    os.replace(tmp, path)
    sync_folder(path.parent)


def _flush(file: Path) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to the disk, where the OS can: some file
    systems and platforms refuse to open or fsync a folder, and a file's data is flushed
    already."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
