"""Run-directory lock: atomic creation, holder in the error, stale takeover, cross-process behaviour."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vca_gen.errors import UserError
from vca_gen.utils import lock as lock_mod
from vca_gen.utils.lock import LOCK_NAME, RunDirLockedError, RunLock, StaleLockWarning, read_lock

REPO = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent("""
    import sys, time
    from vca_gen.utils.lock import RunLock
    lock = RunLock(sys.argv[1], sys.argv[2], command="child-command --flag")
    lock.acquire()
    print("locked", flush=True)
    if sys.argv[3] == "hold":
        time.sleep(120)
    lock.release()
    print("released", flush=True)
""")


def _spawn_holder(directory: Path, purpose: str = "sampling", mode: str = "hold") -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), purpose, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(REPO),
    )
    line = proc.stdout.readline().strip()
    if line != "locked":
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"child did not take the lock: {line!r} {out!r} {err!r}")
    return proc


def _write_record(directory: Path, **fields) -> dict:
    rec = {
        "pid": 999999,
        "host": socket.gethostname(),
        "purpose": "training",
        "started": "2020-01-01T00:00:00Z",
        "command": "train.py --old",
        "started_unix": time.time(),
        "token": "f" * 32,
    }
    rec.update(fields)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / LOCK_NAME).write_text(json.dumps(rec))
    return rec


def test_acquire_writes_record_and_release_removes_it(tmp_path):
    run = tmp_path / "run"  # created by the lock
    with RunLock(run, "training", command="train.py --config x.yaml") as lk:
        assert lk.held
        info = json.loads((run / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid()
        assert info["host"] == socket.gethostname()
        assert info["purpose"] == "training"
        assert info["command"] == "train.py --config x.yaml"
        assert info["started"].endswith("Z") and info["started"][:2] == "20"
        assert abs(info["started_unix"] - time.time()) < 60
        assert info["token"] == lk.info["token"] and len(info["token"]) == 32
        assert read_lock(run) == info
    assert not (run / LOCK_NAME).exists()
    assert not lk.held
    lk.release()  # idempotent
    assert read_lock(run) is None


def test_default_command_is_argv(tmp_path):
    with RunLock(tmp_path, "extraction") as lk:
        assert lk.info["command"] and sys.argv[0].split("/")[-1] in lk.info["command"]


def test_second_acquisition_names_the_holder(tmp_path):
    with RunLock(tmp_path, "training", command="train.py --config a.yaml"):
        with pytest.raises(RunDirLockedError) as ei:
            RunLock(tmp_path, "sampling").acquire()
    err = ei.value
    assert isinstance(err, UserError)
    msg = str(err)
    for part in (
        f"pid {os.getpid()}",
        socket.gethostname(),
        "(training)",
        "since 20",
        "train.py --config a.yaml",
        str(tmp_path),
    ):
        assert part in msg, (part, msg)
    assert err.holder["pid"] == os.getpid() and err.directory == tmp_path
    assert not (tmp_path / LOCK_NAME).exists()  # the failed attempt did not disturb the holder's release


def test_same_object_cannot_acquire_twice(tmp_path):
    lk = RunLock(tmp_path, "training")
    with lk:
        with pytest.raises(RuntimeError, match="already held"):
            lk.acquire()


def test_child_holds_parent_fails_then_takes_over_after_sigkill(tmp_path):
    child = _spawn_holder(tmp_path, "sampling")
    try:
        with pytest.raises(RunDirLockedError) as ei:
            RunLock(tmp_path, "training").acquire()
        msg = str(ei.value)
        assert f"pid {child.pid} " in msg and "(sampling)" in msg and "child-command --flag" in msg
        assert str(tmp_path) in msg
        assert read_lock(tmp_path)["pid"] == child.pid
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert read_lock(tmp_path)["pid"] == child.pid  # a killed holder leaves its lock behind
    lk = RunLock(tmp_path, "training")
    with pytest.warns(StaleLockWarning, match=rf"pid {child.pid} .*not running"):
        lk.acquire()
    try:
        assert lk.taken_over["pid"] == child.pid
        assert read_lock(tmp_path)["pid"] == os.getpid()
    finally:
        lk.release()
    assert read_lock(tmp_path) is None


def test_child_that_releases_leaves_no_lock(tmp_path):
    child = _spawn_holder(tmp_path, "extraction", mode="release")
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0 and "released" in out
    assert read_lock(tmp_path) is None
    with RunLock(tmp_path, "training"):
        pass


def test_zombie_holder_counts_as_dead(tmp_path):
    child = _spawn_holder(tmp_path, "training")
    os.kill(child.pid, signal.SIGKILL)
    deadline = time.time() + 30
    while time.time() < deadline:  # not reaped yet: a zombie, os.kill(pid, 0) still succeeds
        stat = lock_mod._proc_stat(child.pid)
        if stat is None or stat[0] == "Z":
            break
        time.sleep(0.05)
    try:
        if lock_mod._proc_stat(child.pid) is None:
            pytest.skip("no /proc on this system")
        with pytest.warns(StaleLockWarning, match="zombie"):
            RunLock(tmp_path, "training").acquire().release()
    finally:
        child.wait(timeout=30)


def test_dead_pid_record_is_taken_over(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    _write_record(tmp_path, pid=p.pid, purpose="sampling")
    with pytest.warns(StaleLockWarning, match=f"process {p.pid} on this host is not running"):
        with RunLock(tmp_path, "training") as lk:
            assert lk.taken_over["pid"] == p.pid and lk.taken_over["purpose"] == "sampling"


def test_reused_pid_is_detected(tmp_path):
    if lock_mod._proc_stat(os.getpid()) is None:
        pytest.skip("no /proc on this system")
    _write_record(tmp_path, pid=os.getpid(), pid_start=1)  # our pid, but a different process start time
    with pytest.warns(StaleLockWarning, match="pid reused"):
        RunLock(tmp_path, "training").acquire().release()


def test_other_boot_is_stale(tmp_path):
    if lock_mod._boot_id() is None:
        pytest.skip("no boot id on this system")
    _write_record(tmp_path, pid=os.getpid(), boot_id="not-this-boot")
    with pytest.warns(StaleLockWarning, match="rebooted"):
        RunLock(tmp_path, "training").acquire().release()


def test_live_pid_same_host_is_not_taken_over(tmp_path):
    _write_record(tmp_path, pid=os.getppid(), purpose="extraction")  # alive, pid_start unknown
    with pytest.raises(RunDirLockedError, match=f"pid {os.getppid()} .*extraction"):
        RunLock(tmp_path, "training", stale_after_s=0.0).acquire()  # the window only applies to other hosts


def test_other_host_respects_staleness_window(tmp_path):
    rec = _write_record(tmp_path, host="some-other-host.invalid", pid=12345, started_unix=time.time() - 7200)
    old = time.time() - 7200
    os.utime(tmp_path / LOCK_NAME, (old, old))
    with pytest.raises(RunDirLockedError) as ei:
        RunLock(tmp_path, "training", stale_after_s=3 * 3600).acquire()
    msg = str(ei.value)
    assert "some-other-host.invalid" in msg and "pid 12345" in msg and "another host" in msg
    assert "(2 h 0 min ago)" in msg
    with pytest.raises(RunDirLockedError):
        RunLock(tmp_path, "training", stale_after_s=None).acquire()  # never stale
    assert read_lock(tmp_path) == rec
    with pytest.warns(StaleLockWarning, match="staleness window"):
        lk = RunLock(tmp_path, "training", stale_after_s=3600).acquire()
    assert lk.taken_over == rec
    lk.release()


def test_other_host_refreshed_lock_is_not_stale(tmp_path):
    # started long ago but refreshed (mtime) just now: still alive
    _write_record(tmp_path, host="some-other-host.invalid", started_unix=time.time() - 10 * 86400)
    with pytest.raises(RunDirLockedError):
        RunLock(tmp_path, "training", stale_after_s=3600).acquire()


def test_force_takes_over_a_live_lock(tmp_path):
    holder = RunLock(tmp_path, "training").acquire()
    with pytest.warns(StaleLockWarning, match="force"):
        forced = RunLock(tmp_path, "sampling", force=True).acquire()
    assert read_lock(tmp_path)["token"] == forced.info["token"]
    # the old holder no longer owns the file: its release must leave the new lock alone
    with pytest.warns(StaleLockWarning, match="no longer ours"):
        holder.release()
    assert read_lock(tmp_path)["token"] == forced.info["token"]
    forced.release()
    assert read_lock(tmp_path) is None


def test_unreadable_lock_young_blocks_old_is_stale(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_mod, "_ACQUIRE_ATTEMPTS", 3)
    (tmp_path / LOCK_NAME).write_text("")  # created but not yet written
    with pytest.raises(RunDirLockedError, match="cannot be read"):
        RunLock(tmp_path, "training").acquire()
    old = time.time() - 3600
    os.utime(tmp_path / LOCK_NAME, (old, old))
    with pytest.warns(StaleLockWarning, match="unreadable"):
        RunLock(tmp_path, "training").acquire().release()


def test_forked_child_does_not_release_parents_lock(tmp_path):
    lk = RunLock(tmp_path, "training").acquire()
    try:
        pid = os.fork()
        if pid == 0:  # child: releasing must be a no-op
            try:
                lk.release()
                os._exit(0 if (tmp_path / LOCK_NAME).exists() else 1)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        assert read_lock(tmp_path)["pid"] == os.getpid()
    finally:
        lk.release()


def test_heartbeat_refreshes_mtime(tmp_path):
    with RunLock(tmp_path, "training", heartbeat_s=0.05):
        old = time.time() - 3600
        os.utime(tmp_path / LOCK_NAME, (old, old))
        deadline = time.time() + 10
        while time.time() < deadline and (tmp_path / LOCK_NAME).stat().st_mtime < old + 1800:
            time.sleep(0.02)
        assert (tmp_path / LOCK_NAME).stat().st_mtime > old + 1800


def _race(directory: str, start, done, results) -> None:
    import warnings

    warnings.simplefilter("ignore")
    start.wait(30)
    try:
        lk = RunLock(directory, "training").acquire()
    except RunDirLockedError:
        results.put(("locked", os.getpid()))
        return
    results.put(("won", os.getpid()))
    done.wait(60)  # hold until every contender has reported
    lk.release()


def test_concurrent_takeover_of_a_stale_lock_has_one_winner(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    _write_record(tmp_path, pid=p.pid)  # stale: every contender may break it, only one may win
    ctx = mp.get_context("fork")
    start, done, results = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), start, done, results)) for _ in range(4)]
    for pr in procs:
        pr.start()
    start.set()
    outcomes = [results.get(timeout=60) for _ in procs]
    done.set()
    for pr in procs:
        pr.join(timeout=60)
    assert sorted(o for o, _ in outcomes) == ["locked", "locked", "locked", "won"], outcomes
    assert read_lock(tmp_path) is None


def test_late_breaker_does_not_remove_a_fresh_lock(tmp_path):
    """B read the stale record, then A took the lock over; B's break must leave A's lock alone."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    _write_record(tmp_path, pid=p.pid)
    seen_by_b = read_lock(tmp_path)
    with pytest.warns(StaleLockWarning):
        a = RunLock(tmp_path, "training").acquire()
    b = RunLock(tmp_path, "sampling")
    b._break(seen_by_b, "process is not running")  # what B's acquire() would do next
    assert read_lock(tmp_path)["token"] == a.info["token"] and b.taken_over is None
    assert not (tmp_path / ".lock.break").exists()
    with pytest.raises(RunDirLockedError, match=f"pid {os.getpid()} "):
        b.acquire()
    a.release()
