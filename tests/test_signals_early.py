"""Stop signals from the first instruction (issue 17, item 5): a SIGTERM / SIGUSR1 / SIGINT that arrives
while a CLI is still starting (importing torch, checking data) exits 75 with nothing written, not 143.

The subprocess tests wait until the process has installed a SIGTERM handler (``SigCgt`` in
``/proc/PID/status``: the early handlers are the script's first statement, before any slow import)
and send the signal at once, while torch is still being imported. A control run without the early
handlers dies of the signal, so the tests can tell the difference.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vca_gen.utils import signals

REPO = Path(__file__).resolve().parent.parent
LINUX = Path("/proc/self/status").is_file()
needs_proc = pytest.mark.skipif(not LINUX, reason="reads /proc/PID/status (Linux) to see when the handler is in")


# ----------------------------------------------------------------------------- in-process
@pytest.fixture
def early():
    previous = signals.install_early_stop_handlers("tool.py")
    try:
        yield
    finally:
        signals.restore(previous)


def test_a_signal_during_start_up_raises_early_stop_with_75(early, capfd):
    with pytest.raises(signals.EarlyStop) as e:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(5)  # the handler runs at the next bytecode; never reached
    assert e.value.code == signals.EXIT_REQUEUE == 75 and isinstance(e.value, SystemExit)
    assert signals.received() == signal.SIGUSR1
    err = capfd.readouterr().err
    assert "tool.py: received SIGUSR1 while starting" in err and "exit 75" in err


def test_deferred_section_records_and_stops_at_its_end(early):
    done = []
    with pytest.raises(signals.EarlyStop):
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            done.append("the section finished")
    assert done == ["the section finished"] and signals.received() == signal.SIGTERM


def test_restore_puts_the_previous_handlers_back():
    before = {s: signal.getsignal(s) for s in signals.STOP_SIGNALS}
    previous = signals.install_early_stop_handlers("tool.py")
    assert all(signal.getsignal(s) is not before[s] for s in signals.STOP_SIGNALS)
    signals.restore(previous)
    assert {s: signal.getsignal(s) for s in signals.STOP_SIGNALS} == before


# ----------------------------------------------------------------------------- real processes
def _catches(pid: int, sig: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next((int(line.split()[1], 16) for line in text.splitlines() if line.startswith("SigCgt:")), 0)
    return bool(mask >> (sig - 1) & 1)


def _stop_while_starting(cmd: list[str], sig: int = signal.SIGTERM) -> tuple[int, str]:
    """Start ``cmd``, send ``sig`` as soon as it catches SIGTERM (or after 60 s), return (status, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and not _catches(proc.pid, signal.SIGTERM) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert proc.poll() is None, f"the process ended before the signal: {proc.communicate()}"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@needs_proc
def test_sample_py_sigterm_while_starting_exits_75_nothing_written(tmp_path):
    out = tmp_path / "samples"
    rc, err = _stop_while_starting([sys.executable, "sample.py", "--ckpt", str(tmp_path), "--out", str(out)])
    assert rc == 75, err
    assert "sample.py: received SIGTERM while starting" in err and "Traceback" not in err, err
    assert not out.exists()


TRAIN_ARGS = ["--config", "configs/demo.yaml", "train.max_steps=5"]


def _train_via_runpy(out: Path, early: bool) -> list[str]:
    """``python train.py ...`` with (``early``) the early handlers installed just before it runs: train.py's
    real start-up (imports, config, data) either way, independent of where the call will sit."""
    install = "from vca_gen.utils.signals import install_early_stop_handlers as i; i('train.py'); " if early else ""
    code = f"{install}import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path('train.py', run_name='__main__')"
    if not early:  # train.py installs them itself: the control runs its CLI without the wrapper
        code = "import sys; from vca_gen.train.cli import main; sys.exit(main(sys.argv[2:]))"
    return [sys.executable, "-c", code, "train.py", *TRAIN_ARGS, f"train.output_dir={out}"]


@needs_proc
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_train_start_up_stop_exits_75_nothing_written(tmp_path, sig):
    out = tmp_path / "run"
    rc, err = _stop_while_starting(_train_via_runpy(out, early=True), sig)
    assert rc == 75, err
    assert f"train.py: received {signal.Signals(sig).name} while starting" in err and "Traceback" not in err, err
    assert not out.exists()


@needs_proc
def test_control_without_early_handlers_dies_of_the_signal(tmp_path):
    """What the early handlers fix: the signal arrives before any handler, the process dies with it (143)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_train_via_runpy(tmp_path / "run", early=False), cwd=REPO, env=env, stderr=subprocess.PIPE)
    time.sleep(0.2)  # still importing torch
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGTERM
    assert not (tmp_path / "run").exists()


TRAIN_HAS_EARLY_HANDLERS = "install_early_stop_handlers" in (REPO / "train.py").read_text()


@needs_proc
@pytest.mark.skipif(
    not TRAIN_HAS_EARLY_HANDLERS,
    reason="PENDING: train.py gains its one-line install_early_stop_handlers('train.py') call in the `typed` merge",
)
def test_train_py_itself_sigterm_while_starting_exits_75(tmp_path):
    out = tmp_path / "run"
    rc, err = _stop_while_starting([sys.executable, "train.py", *TRAIN_ARGS, f"train.output_dir={out}"])
    assert rc == 75, err
    assert "Traceback" not in err and not out.exists()
