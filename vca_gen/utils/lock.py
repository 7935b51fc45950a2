"""One lock per run directory, so two trainings (or samplings, extractions, sweeps) never write the same run.

>>> with RunLock("runs/dit_s2", "training"):
...     train()

Built on :mod:`filelock` (a pinned dependency): every change of the lock -- taking it, taking a
stale one over, releasing it -- happens while this process holds ``filelock.FileLock`` on
``<directory>/.lock.break`` (an OS lock, released by the kernel if the process dies; it falls back
to an exclusive-create marker on file systems without ``flock``), so no two processes ever decide
at once and the decision needs no retry loop. The lock itself is ``<directory>/.lock``, a JSON
record of its holder written atomically (temporary file + rename, so it is never seen half
written), which outlives the short ``FileLock`` and names the holder::

    {"pid": 1234, "host": "node7", "purpose": "training", "started": "2025-01-02T03:04:05Z",
     "command": "train.py --config ...", "started_unix": ..., "token": "<random hex>",
     "boot_id": "<kernel boot id>", "pid_start": <process start time in clock ticks>}

A second acquisition while the holder lives raises :class:`RunDirLockedError` (a
:class:`~vca_gen.errors.UserError`: a CLI reports it on one line) naming the holder (pid, host,
purpose, since when, command) and the directory. Who may take an existing lock over:

* **Same host, holder gone**: the pid is not alive (``os.kill(pid, 0)`` raises
  ``ProcessLookupError``), is a zombie, was reused by another process (its start time differs from
  ``pid_start``) or the host rebooted since (``boot_id`` differs). Taken over with a
  :class:`StaleLockWarning`.
* **Another host**: its processes cannot be checked, so the lock stands unless it is older than
  ``stale_after_s`` (default 24 h, ``None`` = never), counted from its last refresh: a long-running
  holder keeps its lock fresh with :meth:`RunLock.refresh` (or ``heartbeat_s=`` for a background
  thread that does it). Taken over with a warning.
* ``force=True`` takes over any lock, with a warning.

A lock record that cannot be parsed (damaged, or left by an older version that wrote it in place)
counts as stale once it is ``UNREADABLE_GRACE_S`` old. :meth:`RunLock.release` (and leaving the
``with`` block) removes the record only if it is still ours (same token and pid); a forked child
never releases its parent's lock. A directory that cannot be written (read-only, full) is a
:class:`~vca_gen.utils.io.WriteFaultError` naming it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import secrets
import shlex
import socket
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import filelock

from vca_gen.errors import UserError
from vca_gen.utils.io import atomic_write_text, write_faults

LOCK_NAME = ".lock"
BREAK_NAME = ".lock.break"  # the filelock.FileLock that serialises every change of .lock
DEFAULT_STALE_AFTER_S = 24 * 3600.0
UNREADABLE_GRACE_S = 10.0  # an unparseable lock younger than this may be being written (older versions)
GUARD_TIMEOUT_S = 60.0  # how long to wait for another process's change of the lock (milliseconds, normally)
_ACQUIRE_ATTEMPTS = 20  # looks at a young unreadable record before giving up


class RunDirLockedError(UserError):
    """The run directory is locked by another live run (the message names the holder)."""

    def __init__(self, message: str, directory: Path, holder: dict[str, Any] | None):
        super().__init__(message)
        self.directory = directory
        self.holder = holder


class StaleLockWarning(UserWarning):
    """A lock left by a dead process (or an old one from another host, or forced) was taken over."""


def lock_path(directory: str | os.PathLike) -> Path:
    return Path(directory) / LOCK_NAME


def _now_iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple | None:
    """(state, start time in clock ticks) of ``pid`` from /proc, or None when unavailable."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ... starttime(22nd field)"; comm may contain spaces and parentheses
    rest = raw[raw.rfind(")") + 2 :].split()
    try:
        return rest[0], int(rest[19])
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except OSError as e:  # e.g. EINVAL for a nonsense pid
        return e.errno == errno.EPERM
    return True


def _age_text(seconds: float) -> str:
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def read_lock(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The holder's record in ``<directory>/.lock``; None if there is no lock; ``{}`` if unreadable."""
    try:
        text = lock_path(directory).read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def describe_holder(info: dict[str, Any], now: float | None = None) -> str:
    """ "pid 1234 on host node7 (training) since 2025-01-02T03:04:05Z (2 h 3 min ago), command: ..."."""
    now = time.time() if now is None else now
    since = str(info.get("started", "?"))
    t0 = info.get("started_unix")
    if isinstance(t0, (int, float)):
        since += f" ({_age_text(now - t0)} ago)"
    return (
        f"pid {info.get('pid', '?')} on host {info.get('host', '?')} ({info.get('purpose', '?')}) "
        f"since {since}, command: {info.get('command', '?')}"
    )


class RunLock:
    """Exclusive lock of a run directory for one purpose ("training", "sampling", "extraction").

    Parameters: ``directory`` (created if missing), ``purpose``; ``force`` takes over any existing
    lock; ``stale_after_s`` is how long a lock from another host must have gone without a refresh
    before it is taken over (None = never without ``force``); ``heartbeat_s`` starts a daemon thread
    that refreshes the lock every so many seconds while held; ``command`` overrides the recorded
    command line (default ``sys.argv``).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        purpose: str,
        *,
        force: bool = False,
        stale_after_s: float | None = DEFAULT_STALE_AFTER_S,
        heartbeat_s: float | None = None,
        command: str | None = None,
    ):
        if not str(purpose).strip():
            raise ValueError("RunLock needs a purpose, e.g. 'training', 'sampling', 'extraction'")
        if heartbeat_s is not None and heartbeat_s <= 0:
            raise ValueError(f"heartbeat_s must be > 0 or None, got {heartbeat_s}")
        self.directory = Path(directory)
        self.path = lock_path(self.directory)
        self.purpose = str(purpose)
        self.force = bool(force)
        self.stale_after_s = None if stale_after_s is None else float(stale_after_s)
        self.heartbeat_s = heartbeat_s
        self.command = command if command is not None else shlex.join(sys.argv)
        self.info: dict[str, Any] | None = None  # our record while held
        self.taken_over: dict[str, Any] | None = None  # the record we replaced, if any
        self._owner_pid: int | None = None
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ public API
    @property
    def held(self) -> bool:
        return self.info is not None and self._owner_pid == os.getpid()

    def acquire(self) -> RunLock:
        if self.held:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        with write_faults(self.path, f"the {self.purpose} lock"):
            self.directory.mkdir(parents=True, exist_ok=True)
        for attempt in range(_ACQUIRE_ATTEMPTS):
            with self._guard():
                info = read_lock(self.directory)
                if info is not None:
                    reason = self._takeover_reason(info)
                    if reason is None and info != {}:
                        raise self._locked_error(info)
                    if reason is not None:
                        self._take_over(info, reason)
                        info = None
                if info is None:
                    self._write_record()
                    self._start_heartbeat()
                    return self
            time.sleep(0.05 * (attempt + 1))  # a young unreadable record: look again
        raise RunDirLockedError(
            f"run directory {self.directory} is locked: {self.path} exists but cannot be read as a lock "
            f"record (being written, or left by a crash); it counts as stale once it is "
            f"{UNREADABLE_GRACE_S:.0f} s old, or remove it / use the force option",
            self.directory,
            {},
        )

    def release(self) -> None:
        """Remove the lock file if it is still ours (same token, our pid); idempotent."""
        self._stop_heartbeat()
        if not self.held:
            return  # never acquired, already released, or a forked child
        mine, self.info = self.info, None
        assert mine is not None  # self.held
        with self._guard():
            current = read_lock(self.directory)
            if current and current.get("token") == mine["token"] and current.get("pid") == mine["pid"]:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                return
        if current is not None:
            warnings.warn(
                f"not removing {self.path}: it is no longer ours (now held by "
                f"{describe_holder(current) if current else 'an unreadable record'})",
                StaleLockWarning,
                stacklevel=2,
            )

    def refresh(self) -> None:
        """Mark the lock as alive now (file mtime); keeps a lock on shared storage from looking stale."""
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path, None)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({str(self.directory)!r}, {self.purpose!r}, held={self.held})"

    # ------------------------------------------------------------------ internals
    def _record(self) -> dict[str, Any]:
        now = time.time()
        pid = os.getpid()
        stat = _proc_stat(pid)
        return {
            "pid": pid,
            "host": socket.gethostname(),
            "purpose": self.purpose,
            "started": _now_iso(now),
            "command": self.command,
            "started_unix": now,
            "token": secrets.token_hex(16),
            "boot_id": _boot_id(),
            "pid_start": stat[1] if stat else None,
        }

    @contextlib.contextmanager
    def _guard(self):
        """Hold ``filelock.FileLock(<directory>/.lock.break)`` for one change of the lock record; the
        file is removed before it is released (filelock re-checks the inode, so a waiter that opened
        the removed file retries on a new one) and never stays behind."""
        guard = filelock.FileLock(self.directory / BREAK_NAME, timeout=GUARD_TIMEOUT_S, thread_local=False)
        try:
            with write_faults(self.directory / BREAK_NAME, f"the {self.purpose} lock"):
                guard.acquire()
        except filelock.Timeout:
            raise RunDirLockedError(
                f"could not lock run directory {self.directory}: {self.directory / BREAK_NAME} was held by "
                f"another process for {GUARD_TIMEOUT_S:.0f} s; another process is competing for it",
                self.directory,
                read_lock(self.directory),
            ) from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                (self.directory / BREAK_NAME).unlink()
            guard.release()

    def _write_record(self) -> None:
        """Write our record to ``.lock`` (atomically; call with the guard held)."""
        record = self._record()
        atomic_write_text(self.path, json.dumps(record, indent=1) + "\n", what=f"the {self.purpose} lock")
        self.info = record
        self._owner_pid = record["pid"]

    def _take_over(self, info: dict[str, Any], reason: str) -> None:
        """Remove the stale lock ``info`` (call with the guard held, after reading ``info``)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.taken_over = info
        what = describe_holder(info) if info else "an unreadable lock record"
        warnings.warn(
            f"taking over the lock of run directory {self.directory} held by {what}: {reason}",
            StaleLockWarning,
            stacklevel=4,
        )

    def _age(self, info: dict[str, Any]) -> float | None:
        """Seconds since the lock was written or last refreshed (None if the file vanished)."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        t0 = info.get("started_unix")
        last = max(mtime, float(t0)) if isinstance(t0, (int, float)) else mtime
        return time.time() - last

    def _takeover_reason(self, info: dict[str, Any]) -> str | None:
        """Why ``info``'s lock may be taken over, or None if it stands."""
        if self.force:
            return "force was given"
        age = self._age(info)
        if age is None:
            return None  # vanished: the caller retries the create
        if info == {}:
            return f"the lock file is unreadable and {age:.0f} s old" if age >= UNREADABLE_GRACE_S else None
        pid, host = info.get("pid"), info.get("host")
        if not isinstance(pid, int) or not isinstance(host, str):
            return "the lock record has no valid pid/host" if age >= UNREADABLE_GRACE_S else None
        if host == socket.gethostname():
            boot = _boot_id()
            if info.get("boot_id") and boot and info["boot_id"] != boot:
                return f"host {host} has rebooted since it was taken"
            if not _pid_alive(pid):
                return f"process {pid} on this host is not running"
            stat = _proc_stat(pid)
            if stat is not None:
                if stat[0] in ("Z", "X"):
                    return f"process {pid} on this host has exited (zombie)"
                if isinstance(info.get("pid_start"), int) and stat[1] != info["pid_start"]:
                    return f"process {pid} on this host is a different process now (pid reused)"
            return None
        if self.stale_after_s is not None and age > self.stale_after_s:
            return (
                f"it is from another host ({host}) and was last refreshed {_age_text(age)} ago, longer than "
                f"the staleness window of {_age_text(self.stale_after_s)}"
            )
        return None

    def _locked_error(self, info: dict[str, Any]) -> RunDirLockedError:
        holder = describe_holder(info)
        if info.get("host") == socket.gethostname():
            hint = "wait for it to finish or stop it"
        else:
            window = (
                "never" if self.stale_after_s is None else f"after {_age_text(self.stale_after_s)} without a refresh"
            )
            hint = (
                f"it runs on another host, so it cannot be checked from here; it counts as stale {window}. "
                f"If that process is gone, remove {self.path} or use the force option"
            )
        return RunDirLockedError(f"run directory {self.directory} is locked by {holder}; {hint}", self.directory, info)

    def _break(self, info: dict[str, Any], reason: str) -> None:
        """Remove the stale lock ``info`` if it is still that one (a process that read ``info``
        earlier must not remove a fresh lock another process has taken since)."""
        with self._guard():
            current = read_lock(self.directory)
            if current is not None and (current == info if info else current == {}):
                self._take_over(info, reason)

    def _start_heartbeat(self) -> None:
        if self.heartbeat_s is None:
            return
        self._stop = threading.Event()

        def beat(stop: threading.Event, period: float) -> None:
            while not stop.wait(period):
                self.refresh()

        self._thread = threading.Thread(
            target=beat,
            args=(self._stop, float(self.heartbeat_s)),
            name=f"RunLock heartbeat {self.directory}",
            daemon=True,
        )
        self._thread.start()

    def _stop_heartbeat(self) -> None:
        if self._stop is not None:
            self._stop.set()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join(timeout=5)
        self._stop = self._thread = None


__all__ = [
    "RunLock",
    "RunDirLockedError",
    "StaleLockWarning",
    "read_lock",
    "lock_path",
    "describe_holder",
    "LOCK_NAME",
    "DEFAULT_STALE_AFTER_S",
]
