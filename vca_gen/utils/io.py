"""File helpers shared by every writer: checksums, atomic writes, and output-path safety checks.

Nothing the project writes ever appears half-written under its final name: content goes to a
temporary file ``.<name>.<random>.tmp`` in the same directory (same file system), is flushed and
fsync'ed, given the mode a plain ``open(path, "w")`` would give (``0o666 & ~umask``: 0644 under
umask 022; ``mkstemp`` alone would leave 0600), then ``os.replace``-d over the destination, and
the directory entry is fsync'ed.

* :func:`atomic_open` (a file object), :func:`atomic_path` (a temporary *path*, for writers that
  want a file name, e.g. ``zipfile``), :func:`atomic_write_text`, :func:`atomic_write_json`,
  :func:`atomic_savez` (``np.savez`` / ``np.savez_compressed``).
* :func:`atomic_save_tensors` (safetensors, which alone would leave 0600), :func:`write_faults` (a
  block of writes whose I/O faults become one clear error), :func:`append_text`.
* **I/O faults are user errors.** A write that fails with ENOSPC, EDQUOT, EROFS, EACCES or EPERM
  -- raised directly, or wrapped by a library (torch's zip writer raises a ``RuntimeError`` whose
  context is the ``OSError``; safetensors' error says ``os error 28``) -- becomes a
  :class:`WriteFaultError` naming the path, what was being written, the file system, how much space
  it needs and how much is free. Its temporary file is removed first; the destination and every
  earlier file are untouched. Its ``exit_code`` is 75 (:data:`~vca_gen.errors.EXIT_TEMPFAIL`) for a
  full disk or quota met by a writer whose command continues on a re-run (``resumable=True``:
  checkpoints, sampling shards, latent shards, sweep bookkeeping), else 2.
* Output-path checks, raising :class:`UnsafeWriteError` / :class:`OutputDirError` (both
  :class:`~vca_gen.errors.UserError`, so a CLI reports them on one line with exit 2):
  :func:`refuse_overwrite` (an existing output without ``--overwrite``),
  :func:`refuse_input_as_output` (an output that is one of the inputs, or two outputs that are
  one file), :func:`check_output_path` (the output's folder could not be created or written,
  checked before any slow work), :func:`make_parent_dir` / :func:`make_dir` (create it, with
  the same errors).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from vca_gen.errors import EXIT_TEMPFAIL, EXIT_USAGE, UserError


class UnsafeWriteError(UserError, ValueError):
    """Writing the requested output would destroy something: an existing file (without
    ``--overwrite``), one of the run's own inputs, or another output of the same run."""


class OutputDirError(UserError, OSError):
    """An output's folder cannot be created or written (a file in the way, no permission)."""


# ------------------------------------------------------------------------------ I/O faults
FAULT_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_OS_ERROR_TEXT = re.compile(r"(?:os error|Errno) (\d+)")


class WriteFaultError(UserError, OSError):
    """An output could not be written for a reason the user fixes: a full disk or quota (ENOSPC,
    EDQUOT), a read-only file system (EROFS), no permission (EACCES, EPERM). ``exit_code`` is 75
    when a re-run continues (a full disk at a resumable writer), else 2."""

    def __init__(self, message: str, path: Path, code: int, exit_code: int = EXIT_USAGE, written: int | None = None):
        super().__init__(message)
        self.path = path
        self.fault_errno = code
        self.exit_code = exit_code
        self.written = written


def fault_errno(exc: BaseException) -> int | None:
    """The errno of an I/O fault (:data:`FAULT_ERRNOS`) behind ``exc``: ``exc`` itself, the OSError
    a library wrapped (its ``__cause__`` / ``__context__``), or an ``os error N`` in its text."""
    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, OSError) and e.errno in FAULT_ERRNOS:
            return e.errno
    if not isinstance(exc, OSError):
        m = _OS_ERROR_TEXT.search(str(exc))
        if m and int(m.group(1)) in FAULT_ERRNOS:
            return int(m.group(1))
    return None


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _existing_dir(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.is_dir() and p != p.parent:
        p = p.parent
    return p


def _mount_point(path: Path) -> Path:
    p = _existing_dir(path)
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def write_fault(
    code: int,
    path: str | os.PathLike,
    what: str,
    *,
    need: int | None = None,
    written: int | None = None,
    resumable: bool = False,
) -> WriteFaultError:
    """The :class:`WriteFaultError` for errno ``code`` while writing ``what`` to ``path``; ``need``: the
    bytes the write needs (if known), ``written``: how many it had written when it failed."""
    p = Path(path)
    where = _mount_point(p)
    reason = f"{FAULT_ERRNOS.get(code, os.strerror(code))} ({errno.errorcode.get(code, code)})"
    text = f"cannot write {what} {p}: {reason} on {where}"
    if code in SPACE_ERRNOS:
        try:
            free: str = human_bytes(shutil.disk_usage(_existing_dir(p)).free)
        except OSError:
            free = "an unknown amount"
        if need is not None:
            text += f"; it needs {human_bytes(need)}, {free} free"
        elif written:
            text += f"; it needs more than the {human_bytes(written)} written before it failed, {free} free"
        else:
            text += f"; {free} free"
        again = "re-run the same command to continue where it stopped" if resumable else "re-run the command"
        text += f". Free space (or raise the quota) and {again}; the files written before are untouched"
        exit_code = EXIT_TEMPFAIL if resumable else EXIT_USAGE
    else:
        text += (
            f". Make {p.parent} writable (or choose another output path) and re-run; "
            "the files written before are untouched"
        )
        exit_code = EXIT_USAGE
    return WriteFaultError(text, p, code, exit_code, written)


def _size_or_none(path: str | os.PathLike | None) -> int | None:
    if path is None:
        return None
    try:
        p = Path(path)
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return p.stat().st_size
    except OSError:
        return None


@contextmanager
def write_faults(
    path: str | os.PathLike,
    what: str,
    *,
    need: int | None = None,
    resumable: bool = False,
    partial: str | os.PathLike | None = None,
    cleanup: Callable[[], None] | None = None,
) -> Iterator[None]:
    """``with write_faults(path, "the checkpoint", need=n): ...`` -- an I/O fault raised in the block
    (see :func:`fault_errno`) becomes a :class:`WriteFaultError` (see :func:`write_fault`);
    ``partial``: the temporary file or folder being written (its size is reported), ``cleanup``:
    called before raising (removes the caller's temporary files). A :class:`WriteFaultError` of a
    nested writer is re-described as this block's (the outer ``path`` / ``what`` name the artifact).
    Other errors pass unchanged."""
    try:
        yield
    except Exception as e:
        code = e.fault_errno if isinstance(e, WriteFaultError) else fault_errno(e)
        if code is None:
            raise
        written = _size_or_none(partial)
        if written is None and isinstance(e, WriteFaultError):
            written = e.written
        if cleanup is not None:
            cleanup()
        raise write_fault(code, path, what, need=need, written=written, resumable=resumable) from e


def tensors_nbytes(obj: Any) -> int:
    """Bytes of the tensors / arrays in ``obj`` (a state dict, or nested dicts and lists such as an
    optimizer state): about what a safetensors / torch file of them needs, besides its header."""
    if isinstance(obj, Mapping):
        return sum(tensors_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensors_nbytes(v) for v in obj)
    if hasattr(obj, "element_size") and hasattr(obj, "numel"):
        return int(obj.element_size()) * int(obj.numel())
    return int(getattr(obj, "nbytes", 0) or 0)


def _what(path: Path, what: str | None) -> str:
    return what or "the file"


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
def atomic_open(
    path: str | os.PathLike,
    mode: str = "w",
    durable: bool = True,
    *,
    what: str | None = None,
    need: int | None = None,
    resumable: bool = False,
) -> Iterator[IO[Any]]:
    """``with atomic_open(p, "wb") as f: ...`` — ``p`` is replaced only if the block succeeds.

    The file gets :func:`default_file_mode`. ``durable=False`` skips the two fsyncs (still atomic
    against a killed process, not against a power cut) for bulk outputs such as 50K PNGs.
    ``what`` names the output in an I/O-fault error, ``need`` its expected size in bytes,
    ``resumable`` whether the command continues on a re-run (see :func:`write_fault`).
    """
    path = Path(path)

    def remove_tmp() -> None:
        if os.path.exists(tmp):
            os.unlink(tmp)

    with write_faults(path, _what(path, what), need=need, resumable=resumable):
        fd, tmp = _mkstemp_for(path)
    try:
        os.chmod(tmp, default_file_mode())  # mkstemp's 0600 would make shared outputs unreadable to others
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        written = _size_or_none(tmp)
        remove_tmp()
        code = fault_errno(e) if isinstance(e, Exception) and not isinstance(e, WriteFaultError) else None
        if code is not None:
            raise write_fault(code, path, _what(path, what), need=need, written=written, resumable=resumable) from e
        raise
    if durable:
        fsync_dir(path.parent)


@contextmanager
def atomic_path(
    path: str | os.PathLike,
    durable: bool = True,
    *,
    what: str | None = None,
    need: int | None = None,
    resumable: bool = False,
) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write_file(tmp)`` — for writers that take a file *name*.

    ``tmp`` (an empty file ``.<name>.<random>.tmp`` next to ``p``) is, if the block succeeds,
    given :func:`default_file_mode`, fsync'ed and moved over ``p``; on any exception it is removed
    and ``p`` is untouched. The writer must write to ``tmp`` itself (a library that appends a
    suffix, like ``np.savez`` given a name without ``.npz``, should be given a file object instead).
    ``what`` / ``need`` / ``resumable``: as :func:`atomic_open`.
    """
    path = Path(path)
    with write_faults(path, _what(path, what), need=need, resumable=resumable):
        fd, tmp = _mkstemp_for(path)
        os.close(fd)
    try:
        yield Path(tmp)
        if not os.path.isfile(tmp):
            raise FileNotFoundError(f"atomic_path: the writer removed or renamed its temporary file {tmp}")
        os.chmod(tmp, default_file_mode())  # after the writer: it may have re-created the file (0600)
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        written = _size_or_none(tmp)
        if os.path.exists(tmp):
            os.unlink(tmp)
        code = fault_errno(e) if isinstance(e, Exception) and not isinstance(e, WriteFaultError) else None
        if code is not None:
            raise write_fault(code, path, _what(path, what), need=need, written=written, resumable=resumable) from e
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str, *, what: str | None = None, resumable: bool = False) -> None:
    data = text.encode()
    with atomic_open(path, "wb", what=what, need=len(data), resumable=resumable) as f:
        f.write(data)


def atomic_write_json(
    path: str | os.PathLike, obj: Any, indent: int = 1, *, what: str | None = None, resumable: bool = False
) -> None:
    """Deterministic JSON (sorted keys, trailing newline), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n", what=what, resumable=resumable)


def atomic_savez(
    path: str | os.PathLike,
    compressed: bool = False,
    *,
    what: str | None = None,
    resumable: bool = False,
    **arrays: Any,
) -> Path:
    """``np.savez`` (``np.savez_compressed`` with ``compressed``) of ``arrays`` to exactly ``path``
    (no ``.npz`` is appended), atomically, with :func:`default_file_mode`."""
    import numpy as np

    path = Path(path)
    need = None if compressed else sum(int(np.asarray(a).nbytes) for a in arrays.values())
    with atomic_open(path, "wb", what=what, need=need, resumable=resumable) as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)
    return path


def atomic_save_tensors(
    path: str | os.PathLike,
    tensors: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
    *,
    what: str | None = None,
    resumable: bool = False,
    durable: bool = True,
) -> Path:
    """``safetensors.torch.save_file`` to ``path`` atomically, with :func:`default_file_mode` (safetensors
    alone creates 0600 files whatever the umask) and I/O faults reported as :class:`WriteFaultError`."""
    path = Path(path)
    with atomic_path(path, durable, what=what, need=tensors_nbytes(tensors), resumable=resumable) as tmp:
        write_tensors_file(tmp, tensors, metadata)
    return path


def write_tensors_file(
    path: str | os.PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> Path:
    """``safetensors.torch.save_file`` to ``path`` (not atomic: for files inside a folder that is itself
    renamed into place, as a checkpoint or export), then given :func:`default_file_mode`."""
    from safetensors.torch import save_file

    save_file(dict(tensors), str(path), metadata=dict(metadata) if metadata is not None else None)
    os.chmod(path, default_file_mode())
    return Path(path)


def append_text(path: str | os.PathLike, text: str, *, what: str | None = None, resumable: bool = False) -> None:
    """Append ``text`` to a log-like file (not atomic: readers must tolerate a cut last line)."""
    p = Path(path)
    with write_faults(p, _what(p, what), need=len(text.encode()), resumable=resumable), open(p, "a") as f:
        f.write(text)


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
    except OSError as e:
        if e.errno not in FAULT_ERRNOS:
            raise
        raise write_fault(e.errno, p, f"the folder for {what}") from e
    return p


def make_parent_dir(path: str | os.PathLike, what: str) -> Path:
    """Create the folder of the file ``path`` (see :func:`make_dir`); returns ``Path(path)``."""
    p = Path(path)
    make_dir(Path(os.path.abspath(p)).parent, f"{what} {p}")
    return p
