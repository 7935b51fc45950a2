"""File helpers shared by every writer: checksums, atomic writes, and output-path safety checks.

Nothing the project writes ever appears half-written under its final name: content goes to a
temporary file ``.<name>.<random>.tmp`` in the same directory (same file system), is flushed and
fsync'ed, given the mode a plain ``open(path, "w")`` would give (``0o666 & ~umask``: 0644 under
umask 022; ``mkstemp`` alone would leave 0600), then ``os.replace``-d over the destination, and
the directory entry is fsync'ed.

* :func:`atomic_open` (a file object), :func:`atomic_path` (a temporary *path*, for writers that
  want a file name, e.g. ``zipfile``), :func:`atomic_write_text`, :func:`atomic_write_json`,
  :func:`atomic_savez` (``np.savez`` / ``np.savez_compressed``).
* Output-path checks, raising :class:`UnsafeWriteError` / :class:`OutputDirError` (both
  :class:`~vca_gen.errors.UserError`, so a CLI reports them on one line with exit 2):
  :func:`refuse_overwrite` (an existing output without ``--overwrite``),
  :func:`refuse_input_as_output` (an output that is one of the inputs, or two outputs that are
  one file), :func:`check_output_path` (the output's folder could not be created or written,
  checked before any slow work), :func:`make_parent_dir` / :func:`make_dir` (create it, with
  the same errors).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from vca_gen.errors import UserError


class UnsafeWriteError(UserError, ValueError):
    """Writing the requested output would destroy something: an existing file (without
    ``--overwrite``), one of the run's own inputs, or another output of the same run."""


class OutputDirError(UserError, OSError):
    """An output's folder cannot be created or written (a file in the way, no permission)."""


def sha256_file(path: str | os.PathLike, h: hashlib._Hash | None = None, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes; with ``h`` given, feed that running hash instead and return it."""
    h = hashlib.sha256() if h is None else h
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory entry (best effort: some file systems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` would create a file with: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def _mkstemp_for(path: Path) -> tuple[int, str]:
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", durable: bool = True) -> Iterator[IO[Any]]:
    """``with atomic_open(p, "wb") as f: ...`` — ``p`` is replaced only if the block succeeds.

    The file gets :func:`default_file_mode`. ``durable=False`` skips the two fsyncs (still atomic
    against a killed process, not against a power cut) for bulk outputs such as 50K PNGs.
    """
    path = Path(path)
    fd, tmp = _mkstemp_for(path)
    os.chmod(tmp, default_file_mode())  # mkstemp's 0600 would make shared outputs unreadable to others
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


@contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write_file(tmp)`` — for writers that take a file *name*.

    ``tmp`` (an empty file ``.<name>.<random>.tmp`` next to ``p``) is, if the block succeeds,
    given :func:`default_file_mode`, fsync'ed and moved over ``p``; on any exception it is removed
    and ``p`` is untouched. The writer must write to ``tmp`` itself (a library that appends a
    suffix, like ``np.savez`` given a name without ``.npz``, should be given a file object instead).
    """
    path = Path(path)
    fd, tmp = _mkstemp_for(path)
    os.close(fd)
    try:
        yield Path(tmp)
        if not os.path.isfile(tmp):
            raise FileNotFoundError(f"atomic_path: the writer removed or renamed its temporary file {tmp}")
        os.chmod(tmp, default_file_mode())  # after the writer: it may have re-created the file
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 1) -> None:
    """Deterministic JSON (sorted keys, trailing newline), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def atomic_savez(path: str | os.PathLike, compressed: bool = False, **arrays: Any) -> Path:
    """``np.savez`` (``np.savez_compressed`` with ``compressed``) of ``arrays`` to exactly ``path``
    (no ``.npz`` is appended), atomically, with :func:`default_file_mode`."""
    import numpy as np

    path = Path(path)
    with atomic_open(path, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)
    return path


# ------------------------------------------------------------------------------ output-path safety
def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name one file or folder: ``os.path.samefile`` when both exist
    (catches hard links, symlinks, ``..``), else equal fully resolved paths."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _named(paths: Mapping[str, Any] | Iterable[Any]) -> list[tuple[str, Path]]:
    items = paths.items() if isinstance(paths, Mapping) else ((str(p), p) for p in paths)
    return [(str(name), Path(p)) for name, p in items if p is not None]


def refuse_input_as_output(
    outputs: Mapping[str, Any] | Iterable[Any], inputs: Mapping[str, Any] | Iterable[Any]
) -> None:
    """Raise :class:`UnsafeWriteError` if an output is the same file (or folder) as an input, or
    two outputs are one file. ``outputs`` / ``inputs``: ``{"--json-out": path, ...}`` (the names
    appear in the message) or plain iterables of paths; ``None`` values are skipped. Always
    refused: no ``--overwrite`` makes writing over the run's own input safe."""
    outs, ins = _named(outputs), _named(inputs)
    for i, (oname, o) in enumerate(outs):
        for iname, p in ins:
            if same_file(o, p):
                raise UnsafeWriteError(
                    f"{oname} {o} is the same path as the input {iname} {p}; writing there "
                    f"would destroy the input (this is refused even with --overwrite); choose "
                    f"another output path"
                )
        for oname2, o2 in outs[i + 1 :]:
            if same_file(o, o2):
                raise UnsafeWriteError(
                    f"{oname} {o} and {oname2} {o2} are the same path; give each output its own path"
                )


def refuse_overwrite(path: str | os.PathLike, overwrite: bool, what: str, flag: str = "--overwrite") -> None:
    """Raise :class:`UnsafeWriteError` if ``path`` exists and ``overwrite`` is false (or, always,
    if it is a folder, which a file cannot replace). ``what`` names the output, e.g. ``"--make-ref"``."""
    p = Path(path)
    if p.is_dir():
        raise UnsafeWriteError(f"{what} {p} is an existing folder; give the path of a file to write")
    if (p.exists() or p.is_symlink()) and not overwrite:
        raise UnsafeWriteError(
            f"{what} {p} already exists and was left untouched; pass {flag} to replace it, or choose another path"
        )


def check_output_path(path: str | os.PathLike, what: str) -> Path:
    """Check, without creating anything, that the file ``path`` could be written: it is not a
    folder, and its folder exists as a writable folder or could be created (the nearest existing
    ancestor is a writable folder). Raises :class:`OutputDirError` / :class:`UnsafeWriteError`;
    meant to run before slow work, so a bad ``--out`` fails at once."""
    p = Path(path)
    if p.is_dir():
        raise UnsafeWriteError(f"{what} {p} is an existing folder; give the path of a file to write")
    parent = Path(os.path.abspath(p)).parent
    probe = parent
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputDirError(
            f"cannot create the folder {parent} for {what} {p}: {probe} exists and is not a "
            f"folder; choose an output path under a folder"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputDirError(
            f"cannot write {what} {p}: no permission to "
            f"{'write in' if probe == parent else 'create folders in'} {probe}"
        )
    return p


def make_dir(path: str | os.PathLike, what: str) -> Path:
    """``mkdir -p path`` (mode per umask); a file in the way or missing permission raises
    :class:`OutputDirError` naming ``what`` and the path."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise OutputDirError(
            f"cannot create the folder {p} for {what}: {e.filename or p} exists and is not a "
            f"folder; choose another path"
        ) from e
    except PermissionError as e:
        raise OutputDirError(f"cannot create the folder {p} for {what}: permission denied ({e.filename or p})") from e
    return p


def make_parent_dir(path: str | os.PathLike, what: str) -> Path:
    """Create the folder of the file ``path`` (see :func:`make_dir`); returns ``Path(path)``."""
    p = Path(path)
    make_dir(Path(os.path.abspath(p)).parent, f"{what} {p}")
    return p
