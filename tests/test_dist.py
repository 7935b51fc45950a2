"""The one distributed protocol (``vca_gen.utils.dist``): decide on the main process → broadcast →
every rank verifies → all-reduce of ok flags → one error on every rank naming the failing ranks;
set-up rules (backend, timeout, launch vs group); and no test hook read from the environment."""

from __future__ import annotations

import copy
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from vca_gen.utils import dist

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- a world of threads
class ThreadGroup:
    """One of ``world`` threads with the protocol's three collectives over a shared barrier."""

    def __init__(self, rank: int, world: int, shared: dict):
        self.process_index, self.num_processes, self._s = rank, world, shared
        self.is_main_process = rank == 0
        self.calls: list[str] = []

    def _sync(self):
        self._s["barrier"].wait(timeout=30)

    def broadcast_object(self, obj):
        self.calls.append("broadcast")
        if self.is_main_process:
            self._s["box"] = copy.deepcopy(obj)
        self._sync()
        value = copy.deepcopy(self._s["box"])
        self._sync()
        return value

    def gather_object(self, obj):
        self.calls.append("gather")
        self._s["slots"][self.process_index] = obj
        self._sync()
        value = list(self._s["slots"])
        self._sync()
        return value

    def all_ok(self, ok):
        self.calls.append("all_ok")
        self._s["flags"][self.process_index] = bool(ok)
        self._sync()
        value = all(self._s["flags"])
        self._sync()
        return value


def in_threads(world: int, body) -> list:
    """``body(group)`` on ``world`` threads; returns each rank's value or exception."""
    shared = {"barrier": threading.Barrier(world), "box": None, "slots": [None] * world, "flags": [True] * world}
    groups = [ThreadGroup(r, world, shared) for r in range(world)]
    out: list = [None] * world

    def run(r):
        try:
            out[r] = body(groups[r])
        except BaseException as e:  # noqa: BLE001 - returned to the test
            out[r] = e

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    return out, groups


def test_agree_returns_the_main_decision_everywhere_and_decides_once():
    decided: list[int] = []
    seen: list[tuple[int, dict]] = []

    def body(g):
        def decide():
            decided.append(g.process_index)
            return {"todo": [1, 4], "sha": "abc"}

        def verify(d):
            seen.append((g.process_index, d))
            return None

        return dist.agree(g, decide, verify)

    out, groups = in_threads(3, body)
    assert out == [{"todo": [1, 4], "sha": "abc"}] * 3
    assert decided == [0] and sorted(r for r, _ in seen) == [0, 1, 2]  # every rank verified
    assert all(g.calls == ["broadcast", "all_ok"] for g in groups)  # success: no gather of messages


def test_undo_runs_on_every_rank_when_the_agreement_fails_and_never_on_success():
    undone: list[int] = []

    def body(g, bad_rank):
        verify = lambda d: "differs" if g.process_index == bad_rank else None  # noqa: E731
        return dist.agree(g, lambda: "lock taken", verify, undo=lambda: undone.append(g.process_index))

    out, _ = in_threads(2, lambda g: body(g, bad_rank=1))
    assert all(isinstance(e, dist.DistributedError) for e in out) and sorted(undone) == [0, 1]
    undone.clear()
    out, _ = in_threads(2, lambda g: body(g, bad_rank=None))
    assert out == ["lock taken"] * 2 and undone == []


def test_a_failing_rank_stops_every_rank_with_one_error_naming_it():
    class Boom(RuntimeError):
        pass

    def body(g):
        def verify(d):
            if g.process_index == 1:
                return f"it sees {d + 1}"
            if g.process_index == 2:
                raise OSError("disk gone")  # an exception counts as that rank's problem
            return None

        return dist.agree(g, lambda: 41, verify, error=Boom, failure="does not see x", advice="Fix the mount")

    out, _ = in_threads(3, body)
    want = "rank 1 does not see x: it sees 42; rank 2 does not see x: OSError: disk gone. Fix the mount"
    assert all(isinstance(e, Boom) and str(e) == want for e in out), out
    assert isinstance(out[2].__cause__, OSError)  # the failing rank keeps its original error as the cause


def test_the_main_process_error_reaches_every_rank_and_verify_never_runs():
    verified: list[int] = []

    def body(g):
        def decide():
            raise PermissionError("run directory is locked by pid 7")

        return dist.agree(g, decide, lambda d: verified.append(g.process_index), error=LookupError)

    out, groups = in_threads(3, body)
    assert isinstance(out[0], PermissionError)  # the main keeps its own error (type and message)
    for e in out[1:]:
        assert isinstance(e, LookupError)
        assert str(e) == "the main process stopped: PermissionError: run directory is locked by pid 7"
    assert verified == [] and all(g.calls == ["broadcast"] for g in groups)


def test_every_rank_exits_with_the_main_process_exit_status():
    """A user error with its own exit status on the main process (a full disk at a checkpoint: 75,
    re-run to continue) stops the other ranks with that status, not the generic 2."""
    from vca_gen.errors import UserError

    class DiskFull(UserError):
        exit_code = 75

    def body(g):
        def decide():
            raise DiskFull("checkpoint step 4: no space left on /runs")

        return dist.agree(g, decide, lambda d: None)

    out, _ = in_threads(3, body)
    assert isinstance(out[0], DiskFull)
    for e in out[1:]:
        assert isinstance(e, dist.DistributedError) and e.exit_code == 75
        assert "DiskFull: checkpoint step 4: no space left on /runs" in str(e)
    # without an exit status of its own, the others keep their error's class default
    out, _ = in_threads(2, lambda g: dist.agree(g, lambda: 1 / 0, lambda d: None))
    assert isinstance(out[0], ZeroDivisionError) and out[1].exit_code == dist.DistributedError.exit_code


def test_one_process_needs_no_collective():
    class NoCollectives:
        process_index, num_processes, is_main_process = 0, 1, True

    g = NoCollectives()  # any collective call would raise AttributeError
    assert dist.agree(g, lambda: 3, lambda d: None) == 3
    with pytest.raises(ValueError, match=r"^rank 0 bad: why\. advice$"):
        dist.agree(g, lambda: 3, lambda d: "why", error=ValueError, failure="bad", advice="advice")
    with pytest.raises(KeyError):  # one process: verify's own exception, unchanged
        dist.agree(g, lambda: 3, lambda d: {}["x"])


def test_main_first_loads_on_the_main_before_the_others():
    order: list[int] = []
    lock = threading.Lock()

    def body(g):
        def load():
            with lock:
                order.append(g.process_index)
            return f"model@{g.process_index}"

        return dist.main_first(g, load, lambda: "sha-of-main")

    out, _ = in_threads(3, body)
    assert order[0] == 0 and sorted(order) == [0, 1, 2]
    assert out == [(f"model@{r}", "sha-of-main") for r in range(3)]


def test_main_first_failure_on_another_rank_is_named_everywhere():
    def body(g):
        def load():
            if g.process_index == 2:
                raise FileNotFoundError("vae/config.json")
            return 1

        return dist.main_first(g, load, error=RuntimeError, failure="could not load the VAE")

    out, _ = in_threads(3, body)
    want = "rank 2 could not load the VAE: FileNotFoundError: vae/config.json"
    assert all(isinstance(e, RuntimeError) and str(e) == want for e in out), out


# ----------------------------------------------------------------------------- set-up rules
@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), "soon", None])
def test_timeout_must_be_finite_and_positive(bad):
    with pytest.raises(dist.DistributedError, match=r"--timeout-s=.* is not valid; accepted: a finite number"):
        dist.check_timeout(bad, "--timeout-s")


def test_timeout_accepts_seconds():
    assert dist.check_timeout("2.5", "train.timeout_s") == 2.5 and dist.check_timeout(1800, "x") == 1800.0


def test_backend_rule(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dist.backend() == "nccl" and not dist.use_cpu()
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    assert dist.backend() == "gloo" and dist.use_cpu()
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dist.backend() == "gloo"  # no CUDA: gloo, without any flag (the rule sampling used to miss)


def test_launch_from_the_environment(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert dist.launched() == dist.Launch(0, 1, 0)
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist.launched() == dist.Launch(5, 8, 1)  # the device follows LOCAL_RANK, not RANK
    monkeypatch.setenv("RANK", "8")
    with pytest.raises(dist.DistributedError, match="0 <= RANK < WORLD_SIZE"):
        dist.launched()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(dist.DistributedError, match="RANK='x' is not valid"):
        dist.launched()


def test_a_group_that_does_not_match_the_launch_is_refused():
    class Lonely:  # what accelerate gives when the processes did not form a group
        num_processes, process_index = 1, 0

    with pytest.raises(dist.DistributedError, match="launched as process 1 of 2 .* refusing to run"):
        dist.check_group(Lonely(), dist.Launch(rank=1, world_size=2, local_rank=1))
    dist.check_group(Lonely(), dist.Launch())  # one process: fine


def test_bounded_translates_only_backend_failures_when_the_block_also_computes():
    """A training step computes around its collective: an error of the computation (an OOM, a shape
    error) passes unchanged; the backend's report of a timeout or a lost peer becomes one clear error."""
    import torch.distributed as tdist

    gloo = RuntimeError("[/x/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer")
    for e in (gloo, tdist.DistBackendError("NCCL watchdog timeout"), tdist.DistNetworkError("reset")):
        assert dist.is_backend_failure(e), e
        with pytest.raises(dist.DistributedError, match="process 1 of 2: the step x failed: .* Kept.$") as got:
            with dist.bounded("step x", 1, 2, only_backend=True, then="Kept."):
                raise e
        assert got.value.__cause__ is e
    oom = torch.OutOfMemoryError("CUDA out of memory")
    for e in (oom, RuntimeError("mat1 and mat2 shapes cannot be multiplied")):
        assert not dist.is_backend_failure(e), e
        with pytest.raises(type(e)) as got:
            with dist.bounded("step x", 1, 2, only_backend=True):
                raise e
        assert got.value is e
    with pytest.raises(dist.DistributedError, match="the broadcast failed"):  # a bare collective: any error
        with dist.bounded("broadcast", 0, 2):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")


# ----------------------------------------------------------------------------- real gloo processes
WORKER = textwrap.dedent(
    """
    import os, sys, time
    from vca_gen.utils import dist

    mode = sys.argv[1]
    g = dist.setup(float(sys.argv[2]))
    try:
        if mode == "disagree":
            d = dist.agree(g, lambda: {"n": 41}, lambda d: "it sees 42" if g.process_index == 1 else None,
                           failure="does not see n", advice="Share the disk")
            print("OK", d, flush=True)
        elif mode == "late":  # rank 1 joins the all-reduce after the timeout
            if g.process_index == 1:
                time.sleep(12)
            try:
                g.all_ok(True)
                print("OK", flush=True)
            except Exception as e:
                print("TIMEOUT", type(e).__name__, "|", e, "|", type(e.__cause__).__name__, flush=True)
            os._exit(3)  # no teardown of a group with a peer gone
    except dist.DistributedError as e:
        print("ERR", e, flush=True)
        sys.exit(2)
    finally:
        dist.close()
    """
)


def _gloo(mode: str, timeout_s: float, world: int = 2) -> list[tuple[int, str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "ACCELERATE_USE_CPU": "1",
            "OMP_NUM_THREADS": "1",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        cmd = [sys.executable, "-c", WORKER, mode, str(timeout_s)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return [(p.wait(timeout=300), p.stdout.read()) for p in procs]


@pytest.mark.slow
def test_gloo_processes_stop_together_naming_the_failing_rank():
    results = _gloo("disagree", 60)
    want = "ERR rank 1 does not see n: it sees 42. Share the disk"
    for rc, out in results:
        assert rc == 2 and want in out, out[-2000:]


@pytest.mark.slow
def test_gloo_collective_times_out_after_the_given_seconds():
    """The timeout given to set-up bounds a collective: rank 0 stops waiting for a late rank 1."""
    (rc0, out0), _ = _gloo("late", 4)
    assert rc0 == 3 and "TIMEOUT DistributedError |" in out0, out0[-2000:]
    # one clear error naming the bound and its option, the backend's own error kept as the cause
    assert "process 0 of 2: the all-reduce of every process's verdict failed" in out0, out0[-2000:]
    assert "did not arrive within --timeout-s=4 s" in out0 and "needs a larger --timeout-s" in out0, out0[-2000:]
    assert out0.rstrip().endswith("| RuntimeError") or "| DistBackendError" in out0, out0[-2000:]


# ----------------------------------------------------------------------------- no hooks in production
ALLOWED_ENV = {  # file → why it may read the environment
    "vca_gen/utils/dist.py": "RANK / WORLD_SIZE / LOCAL_RANK of the launch",
    "vca_gen/utils/assets.py": "asset folder (VCA_GEN_ASSETS, XDG_CACHE_HOME)",
    "vca_gen/metrics/weights.py": "Inception weights path (VCA_GEN_INCEPTION)",
    "vca_gen/sweep/cells.py": "stage_env: the stages' environment with the thread count pinned",
}


def test_production_code_reads_no_test_hook_from_the_environment():
    readers = {}
    for p in sorted((REPO / "vca_gen").rglob("*.py")):
        text = p.read_text()
        rel = str(p.relative_to(REPO))
        assert "VCA_GEN_TEST" not in text and "VCA_GEN_SWEEP_FAIL" not in text, rel
        if re.search(r"os\.environ|os\.getenv", text):
            readers[rel] = True
    assert set(readers) <= set(ALLOWED_ENV), sorted(set(readers) - set(ALLOWED_ENV))
