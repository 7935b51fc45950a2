"""Real I/O faults at every kind of writer: a size-limited tmpfs (ENOSPC), a read-only remount
(EROFS), a corrupted export, two sweeps at once.

The faults are made, not mocked: the file systems are ``mount -t tmpfs -o size=...`` and
``mount -o remount,ro``, which need root (skipped elsewhere, saying so). Each test checks what the
user sees (one error naming the path and what was written, the exit status: 75 where a re-run
continues, else 2), that no temporary file is left, that the earlier good files are untouched and,
where it applies, that a re-run after space is freed continues to the same bytes as an
uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from test_checkpoint import tiny_cfg, write_ckpt
from test_data_common import tiny_setup  # noqa: F401 (fixture)
from test_file_safety import export as hand_export  # noqa: F401 (fixture)
from test_sampling_engine import load, run_world, spec, stand_in
from vca_gen.errors import EXIT_TEMPFAIL, EXIT_USAGE, cli_boundary
from vca_gen.experiment import build as B
from vca_gen.experiment import checkpoint as ckpt
from vca_gen.utils.io import WriteFaultError, atomic_save_tensors, atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parent.parent
PAGE = 4096


# ------------------------------------------------------------------------------ file systems
def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True)


def _mount_tmpfs(path: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a size-limited tmpfs (the real ENOSPC / EROFS faults)")
    path.mkdir(parents=True, exist_ok=True)
    r = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?): {r.stderr.strip()}")


@pytest.fixture
def small_fs(tmp_path):
    """A 96 MiB tmpfs (memory is used only as it is written); ``remount("ro")`` makes it read-only."""
    mnt = tmp_path / "fs"
    _mount_tmpfs(mnt, "96m")

    class FS:
        path = mnt

        @staticmethod
        def remount(opts: str) -> None:
            r = _run("mount", "-o", f"remount,{opts}", str(mnt))
            assert r.returncode == 0, r.stderr

    yield FS
    _run("umount", "-l", str(mnt))


def fill(fs: Path, leave: int = 0) -> Path:
    """Fill ``fs`` until at most ``leave`` bytes are free (tmpfs counts whole pages); returns the filler."""
    filler = fs / "filler.bin"

    def free() -> int:
        st = os.statvfs(fs)
        return st.f_bavail * st.f_frsize

    with open(filler, "ab") as f:
        for chunk in (1 << 20, 1 << 16, PAGE):
            while free() >= leave + chunk:
                try:
                    f.write(b"\0" * chunk)
                    f.flush()
                except OSError as e:
                    assert e.errno == errno.ENOSPC
                    break
    assert free() <= leave + PAGE if leave else free() == 0, free()
    return filler


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def reported_need(msg: str) -> float:
    import re

    m = re.search(r"it needs ([\d.]+) (bytes|KiB|MiB|GiB)", msg)
    assert m, msg
    return float(m.group(1)) * {"bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[m.group(2)]


def assert_fault(err: BaseException, code: int, exit_code: int, *needles: str) -> None:
    assert isinstance(err, WriteFaultError), repr(err)
    assert err.fault_errno == code and err.exit_code == exit_code, (err.fault_errno, err.exit_code, str(err))
    msg = str(err)
    assert "\n" not in msg and msg.startswith("cannot write "), msg
    for n in needles:
        assert n in msg, (n, msg)


# ------------------------------------------------------------------------------ the writer helper
def test_writer_helper_on_a_full_disk_names_path_and_space(small_fs):
    fs = small_fs.path
    good = fs / "result.json"
    atomic_write_json(good, {"fid": 1.0})
    before = good.read_bytes()
    fill(fs)
    big = "x" * (64 * 1024)
    with pytest.raises(WriteFaultError) as ei:
        atomic_write_text(good, big, what="the result")
    assert_fault(ei.value, errno.ENOSPC, EXIT_USAGE, f"the result {good}", "no space left", "it needs 64.0 KiB")
    assert good.read_bytes() == before and temp_files(fs) == []
    with pytest.raises(WriteFaultError) as ei:
        atomic_write_text(fs / "shard.json", big, what="a shard", resumable=True)
    assert ei.value.exit_code == EXIT_TEMPFAIL and "re-run the same command to continue" in str(ei.value)
    # the CLI boundary: one line, the error's exit status
    rc = cli_boundary("tool.py", lambda: atomic_write_text(good, big, what="the result"))
    assert rc == EXIT_USAGE and good.read_bytes() == before and temp_files(fs) == []
    (fs / "filler.bin").unlink()
    atomic_write_text(good, big)
    assert good.read_text() == big


def test_safetensors_writes_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        p = atomic_save_tensors(tmp_path / "a.safetensors", {"w": torch.arange(4.0)})
        cfg = tiny_cfg(tmp_path)
        model = B.build_model(cfg)
        ck = write_ckpt(tmp_path / "ckpts", 1, model, cfg)
        out = ckpt.export(ck, tmp_path / "export")
    finally:
        os.umask(old)
    for f in (p, ck / "model.safetensors", ck / "ema.safetensors", out / "model.safetensors", out / "checksums.json"):
        assert (f.stat().st_mode & 0o777) == 0o640, (f, oct(f.stat().st_mode))


# ------------------------------------------------------------------------------ checkpoints
def test_checkpoint_on_a_full_disk_exits_75_and_keeps_the_previous_one(small_fs, tmp_path):
    fs = small_fs.path
    cfg = tiny_cfg(tmp_path)
    torch.manual_seed(0)
    model = B.build_model(cfg)
    root = fs / "checkpoints"
    first = write_ckpt(root, 1, model, cfg)
    before = snapshot(first)
    fill(fs, leave=8 * PAGE)  # room for small files, not for the weights
    with pytest.raises(WriteFaultError) as ei:
        write_ckpt(root, 2, model, cfg)
    need = 2 * sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert_fault(
        ei.value, errno.ENOSPC, EXIT_TEMPFAIL, "checkpoint step 2", str(root / "step_00000002"), "it needs", "free"
    )
    assert need <= reported_need(str(ei.value)) <= need + (1 << 20)  # both weight files, plus small files
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001"]  # no step_00000002.tmp left
    assert snapshot(first) == before
    ckpt.verify_checkpoint(first)
    (fs / "filler.bin").unlink()  # space freed: the same save now succeeds
    second = write_ckpt(root, 2, model, cfg)
    ckpt.verify_checkpoint(second)
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [1, 2]


def test_checkpoint_on_a_read_only_fs_exits_2(small_fs, tmp_path):
    fs = small_fs.path
    cfg = tiny_cfg(tmp_path)
    model = B.build_model(cfg)
    first = write_ckpt(fs / "checkpoints", 1, model, cfg)
    before = snapshot(fs)
    small_fs.remount("ro")
    with pytest.raises(WriteFaultError) as ei:
        write_ckpt(fs / "checkpoints", 2, model, cfg)
    assert_fault(ei.value, errno.EROFS, EXIT_USAGE, "checkpoint step 2", "read-only file system", "writable")
    assert snapshot(fs) == before
    ckpt.verify_checkpoint(first)


# ------------------------------------------------------------------------------ exports
@pytest.fixture
def real_export(tmp_path):
    cfg = tiny_cfg(tmp_path)
    torch.manual_seed(0)
    model = B.build_model(cfg)
    ck = write_ckpt(tmp_path / "ckpts", 3, model, cfg)
    return ck, ckpt.export(ck, tmp_path / "export")


def test_export_on_a_full_disk_and_read_only_fs(small_fs, real_export):
    fs = small_fs.path
    ck, _ = real_export
    fill(fs, leave=4 * PAGE)
    with pytest.raises(WriteFaultError) as ei:
        ckpt.export(ck, fs / "export")
    assert_fault(ei.value, errno.ENOSPC, EXIT_USAGE, f"the export {fs / 'export'}", "it needs")
    assert sorted(p.name for p in fs.iterdir()) == ["filler.bin"]  # no export.tmp, no export
    (fs / "filler.bin").unlink()
    small_fs.remount("ro")
    with pytest.raises(WriteFaultError) as ei:
        ckpt.export(ck, fs / "export")
    assert_fault(ei.value, errno.EROFS, EXIT_USAGE, "the export", "read-only file system")
    small_fs.remount("rw")
    out = ckpt.export(ck, fs / "export")
    ckpt.verify_export(out)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "decoder.json"])
def test_corrupted_export_is_refused_naming_the_file(real_export, tmp_path, capsys, name):
    from vca_gen.sample.cli import main as sample_main

    _, out = real_export
    ckpt.load_for_sampling(out)  # intact: loads
    f = out / name
    data = bytearray(f.read_bytes())
    i = len(data) - 7 if name == "model.safetensors" else len(data) // 2  # a weight byte / a text byte
    data[i] ^= 0x5A
    f.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointDamagedError) as ei:
        ckpt.load_for_sampling(out)
    assert ei.value.damaged == f and f"export {out} is damaged: {f} does not match its recorded sha256" in str(ei.value)
    capsys.readouterr()
    rc = sample_main(["--ckpt", str(out), "--out", str(tmp_path / "s"), "--num-samples", "10", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("sample.py: error: ") and str(f) in err, err
    assert "Traceback" not in err and not (tmp_path / "s" / "samples.npz").exists()


def test_truncated_export_and_missing_file_are_named(real_export):
    _, out = real_export
    w = out / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(ckpt.CheckpointDamagedError, match=r"has \d+ bytes, \d+ were written"):
        ckpt.load_for_sampling(out)
    w.unlink()
    (out / "decoder.json").unlink()
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_for_sampling(out)


def test_init_from_a_corrupted_export_is_refused(real_export):
    """``train.init_from`` loads through ``load_for_sampling``: the same verification."""
    _, out = real_export
    f = out / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointDamagedError, match="model.safetensors does not match"):
        ckpt.load_for_sampling(out, use_ema=True)


# ------------------------------------------------------------------------------ samples
def test_sampling_shards_on_a_full_disk_exit_75_and_a_rerun_continues_to_the_same_bytes(small_fs, tmp_path):
    fs = small_fs.path
    ref = tmp_path / "ref"
    run_world(spec(ref, n=80), 1)
    want = load(ref / "samples.npz")
    out = fs / "samples"
    filled = []

    def make(indices, labels, gens):
        if indices.start >= 24 and not filled:  # the disk fills while shard 3 is computed
            filled.append(fill(fs))
        return stand_in(indices, labels, gens)

    with pytest.raises(WriteFaultError) as ei:
        run_world(spec(out, n=80), 1, make=make)
    assert_fault(ei.value, errno.ENOSPC, EXIT_TEMPFAIL, "sampling shard 3", str(out / "shard_00003.npz"))
    done = sorted(p.name for p in out.glob("shard_*.npz"))
    assert done == ["shard_00000.npz", "shard_00001.npz", "shard_00002.npz"]
    assert temp_files(out) == [] and not (out / "samples.npz").exists() and not (out / ".lock").exists()
    before = snapshot(out)
    filled[0].unlink()
    res = run_world(spec(out, n=80), 1)[0]
    assert res.resumed_shards == 3 and res.generated == 80 - 24
    got = load(out / "samples.npz")
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert all(snapshot(out)[k] == v for k, v in before.items() if k.startswith("shard_"))


def test_samples_npz_on_a_full_disk_exits_75_then_assembles(small_fs, tmp_path):
    fs = small_fs.path
    out = fs / "samples"
    run_world(spec(out, n=80), 1)
    shards = {k: v for k, v in snapshot(out).items() if k.startswith("shard_")}
    (out / "samples.npz").unlink()
    fill(fs, leave=2 * PAGE)  # the lock and manifest fit, the assembled file (3 pages) does not
    with pytest.raises(WriteFaultError) as ei:
        run_world(spec(out, n=80), 1)
    assert_fault(ei.value, errno.ENOSPC, EXIT_TEMPFAIL, "the samples file", str(out / "samples.npz"), "it needs")
    assert temp_files(out) == [] and not (out / "samples.npz").exists()
    assert {k: v for k, v in snapshot(out).items() if k.startswith("shard_")} == shards
    (fs / "filler.bin").unlink()
    res = run_world(spec(out, n=80), 1)[0]
    assert res.generated == 0 and res.path == out / "samples.npz"


def test_sample_cli_on_a_full_disk_is_one_line_exit_75(small_fs, hand_export, capsys):  # noqa: F811
    from vca_gen.sample.cli import main as sample_main

    fs = small_fs.path
    fill(fs, leave=2 * PAGE)
    out = fs / "s"
    args = ["--ckpt", str(hand_export), "--out", str(out), "--num-samples", "20", "--steps", "2"]
    rc = sample_main([*args, "--shard-size", "10", "--no-progress", "--grid-classes", "0"])
    err = capsys.readouterr().err
    assert rc == 75, err
    assert err.count("\n") == 1 and err.startswith("sample.py: error: cannot write ") and str(out) in err, err
    assert "Traceback" not in err and temp_files(out) == []


def test_sample_cli_on_a_read_only_fs_is_one_line_exit_2(small_fs, hand_export, capsys):  # noqa: F811
    from vca_gen.sample.cli import main as sample_main

    fs = small_fs.path
    small_fs.remount("ro")
    args = ["--ckpt", str(hand_export), "--out", str(fs / "s"), "--num-samples", "10", "--no-progress"]
    rc = sample_main(args)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "read-only file system" in err and str(fs / "s") in err, err


# ------------------------------------------------------------------------------ statistics
def test_statistics_on_a_full_disk_exit_2_and_the_old_file_stays(small_fs):
    from vca_gen.metrics.statistics import load_reference, save_statistics, statistics_from_features

    fs = small_fs.path
    feats = np.random.default_rng(0).standard_normal((300, 2048)).astype(np.float32)
    stats = statistics_from_features([feats], "clean", resolution=(32, 32), source="new")
    path = fs / "ref.npz"
    save_statistics(statistics_from_features([feats[:50]], "clean", resolution=(32, 32), source="old"), path)
    before = path.read_bytes()
    fill(fs, leave=PAGE)
    with pytest.raises(WriteFaultError) as ei:
        save_statistics(stats, path)
    assert_fault(ei.value, errno.ENOSPC, EXIT_USAGE, f"the statistics file {path}", "it needs")
    assert path.read_bytes() == before and temp_files(fs) == []
    assert load_reference(path).count == 50


# ------------------------------------------------------------------------------ latent shards
def test_latent_shard_on_a_full_disk_exits_75_and_extraction_resumes(small_fs, tiny_setup, capsys):  # noqa: F811
    from vca_gen.data.extract import main as extract_main

    images, vae_dir, reference = tiny_setup
    fs = small_fs.path
    store = fs / "store"
    argv = ["--images", str(images), "--out", str(store), "--vae", str(vae_dir), "--image-size", "32"]
    argv += ["--batch-size", "4", "--shard-size", "5", "--num-workers", "0"]
    assert extract_main(argv) == 0
    want = {p.name: p.read_bytes() for p in reference.iterdir() if p.suffix == ".safetensors"}
    (store / "manifest.json").unlink()
    (store / "shard_00001.safetensors").unlink()  # as if killed before it was written
    (store / "shard_00001.json").unlink()
    fill(fs, leave=6 * PAGE)  # the small records fit, the shard (~80 KiB) does not
    capsys.readouterr()
    rc = extract_main(argv)
    err = capsys.readouterr().err
    assert rc == 75, err
    errors = [ln for ln in err.replace("\r", "\n").splitlines() if "error" in ln]
    assert len(errors) == 1 and errors[0].startswith("extract_latents.py: error: cannot write latent shard 1 "), err
    assert str(store / "shard_00001.safetensors") in err and "Traceback" not in err
    assert "it needs" in err and not (store / "shard_00001.safetensors").exists()
    assert not [p for p in store.iterdir() if p.name.startswith(".") and "tmp" in p.name]
    (fs / "filler.bin").unlink()
    assert extract_main(argv) == 0
    got = {p.name: p.read_bytes() for p in store.iterdir() if p.suffix == ".safetensors"}
    assert got == want


# ------------------------------------------------------------------------------ sweep cells
def _micro_cell(tmp_path: Path, results: Path):
    from test_sweep import _stats_file, micro, write
    from vca_gen.sweep.plan import validate
    from vca_gen.sweep.spec import load_sweep

    s = micro(tmp_path, results_dir=str(results))
    s["evaluate"]["reference"] = str(_stats_file(tmp_path / "ref.npz", "clean", 32))
    s["evaluate"]["mode"] = "clean"
    s["execution"] = {"backend": "local", "parallel": 1}
    return s, validate(load_sweep(write(tmp_path, s))).cells[0]


def test_sweep_cell_result_on_a_full_disk_exits_75_and_a_rerun_commits_it(small_fs, tmp_path):
    from vca_gen.sweep.cells import read_events, run_cell, stages

    fs = small_fs.path
    _, plan = _micro_cell(tmp_path, fs / "results")
    for st in stages(plan):  # every stage already done: only the bookkeeping is left
        Path(st.output).parent.mkdir(parents=True, exist_ok=True)
        Path(st.output).write_text(json.dumps({"fid": 12.5, "n": 10}))
    (fs / "results" / "cells").mkdir(parents=True)
    fill(fs)
    with pytest.raises(WriteFaultError) as ei:
        run_cell(plan)
    assert_fault(ei.value, errno.ENOSPC, EXIT_TEMPFAIL, "the cell's result", str(plan.result_file))
    assert not Path(plan.result_file).exists() and temp_files(fs) == []
    assert not (Path(plan.cell_dir) / ".lock").exists()  # the cell lock was released
    (fs / "filler.bin").unlink()
    assert run_cell(plan)["status"] == "done"
    rec = json.loads(Path(plan.result_file).read_text())
    assert rec["experiment_hash"] == plan.experiment_hash and rec["train_minutes"] == 0
    assert {e["event"] for e in read_events(plan.cell_dir)} == {"skipped"}


def test_sweep_stage_logs_on_a_read_only_fs_exit_2_with_no_open_attempt(small_fs, tmp_path):
    from types import SimpleNamespace

    from vca_gen.sweep.cells import Stage, read_events, run_stage

    fs = small_fs.path
    cell = fs / "cell"
    (cell / "logs").mkdir(parents=True)
    small_fs.remount("ro")
    stage = Stage("train", "train", None, [sys.executable, "-c", "pass"], str(cell / "train.json"))
    with pytest.raises(WriteFaultError) as ei:
        run_stage(SimpleNamespace(cell_dir=str(cell), key="k", variant="v", seed=0), stage)
    assert_fault(ei.value, errno.EROFS, EXIT_USAGE, "the stage's log", "read-only file system")
    assert read_events(cell) == []


@pytest.mark.slow
def test_two_sweeps_at_once_the_second_exits_2_naming_the_holder(tmp_path, capsys):
    """A second ``sweep.py run`` of a running sweep exits 2 naming the first (pid, host, start), and
    writes nothing in its cells; the first one's attempt is the only one recorded."""
    from vca_gen.sweep import cli
    from vca_gen.sweep.cells import read_events

    s, plan = _micro_cell(tmp_path, tmp_path / "results")
    yaml_path = tmp_path / "micro.yaml"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    first = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "hooked_cli.py"), "--step-sleep", "120", str(REPO / "sweep.py")]
        + ["run", str(yaml_path), "--no-report"],
        cwd=str(tmp_path),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not [e for e in read_events(plan.cell_dir) if e["event"] == "start"]:
            assert first.poll() is None, first.communicate()
            time.sleep(0.2)
        events = read_events(plan.cell_dir)
        assert [e["event"] for e in events] == ["start"], events
        log_sizes = {p.name: p.stat().st_size for p in (Path(plan.cell_dir) / "logs").iterdir()}
        capsys.readouterr()
        rc = cli.main(["run", str(yaml_path), "--no-report"])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert err.startswith("sweep.py: error: run directory ") and err.count("\n") == 1, err
        assert f"pid {first.pid} " in err and "(sweep)" in err and "since 20" in err, err
        assert read_events(plan.cell_dir) == events  # the second run recorded nothing
        assert {p.name: p.stat().st_size for p in (Path(plan.cell_dir) / "logs").iterdir()} == log_sizes
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate(timeout=60)


# ------------------------------------------------------------------------------ training end to end
@pytest.mark.slow
def test_training_on_a_full_disk_exits_75_and_the_rerun_continues_exactly(small_fs, tmp_path):
    """The disk fills between two checkpoints: the next checkpoint write fails (exit 75, the earlier
    checkpoint intact, no half-written one left); after space is freed the same command resumes
    and ends bit-identical to a run that never failed."""
    from test_training_common import assert_identical, ckpt_tensors, image_data, make_images, run, tiny_dict

    fs = small_fs.path
    images = make_images(tmp_path / "images")
    common = dict(data=image_data(images), max_steps=6, ckpt_every=2)
    run(tiny_dict(tmp_path / "a", **common))
    run(tiny_dict(fs / "run", **{**common, "max_steps": 2}))
    first = fs / "run" / "checkpoints" / "step_00000002"
    before = snapshot(first)
    filler = fill(fs, leave=48 * PAGE)  # logs fit; a checkpoint (~1 MiB) does not
    with pytest.raises(WriteFaultError) as ei:
        run(tiny_dict(fs / "run", **common))
    assert_fault(ei.value, errno.ENOSPC, EXIT_TEMPFAIL, "checkpoint step 4", "it needs", "re-run the same command")
    assert sorted(p.name for p in (fs / "run" / "checkpoints").iterdir()) == ["step_00000002"]
    assert snapshot(first) == before and temp_files(fs / "run") == []
    filler.unlink()
    assert run(tiny_dict(fs / "run", **common))["step"] == 6
    assert_identical(
        ckpt_tensors(tmp_path / "a/checkpoints/step_00000006"), ckpt_tensors(fs / "run/checkpoints/step_00000006")
    )


def test_damaged_shard_on_rerun_is_a_user_error_naming_it(tmp_path):
    """A shard damaged after it was written: the re-run (assembling ``samples.npz``) stops with a
    user error (one line, exit 2) naming the shard, not a traceback."""
    from vca_gen.errors import UserError

    out = tmp_path / "s"
    run_world(spec(out, n=30), 1)
    (out / "samples.npz").unlink()
    bad = out / "shard_00001.npz"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(UserError, match="shard_00001.npz is unreadable.*delete it to regenerate it") as ei:
        run_world(spec(out, n=30), 1)
    assert ei.value.exit_code == EXIT_USAGE and not (out / "samples.npz").exists()


def test_lock_on_a_read_only_fs_is_a_write_fault(small_fs):
    from vca_gen.utils.lock import RunLock

    run = small_fs.path / "run"
    run.mkdir()
    small_fs.remount("ro")
    with pytest.raises(WriteFaultError) as ei:
        RunLock(run, "training").acquire()
    assert_fault(ei.value, errno.EROFS, EXIT_USAGE, "the training lock", str(run), "read-only file system")


@pytest.mark.slow
def test_two_processes_on_a_full_disk_stop_together_with_exit_75(small_fs, tmp_path):
    """Two gloo processes (no launcher: each exit status is its own): the disk fills before the
    step-4 checkpoint. The main process's write fails (one line, exit 75); the other process stops
    with the same status and the main's message at once, instead of waiting in the next collective
    until the process-group timeout (600 s here: the test would time out first)."""
    from test_training_common import image_data, launch_direct, make_images, run, tiny_dict, wait_all, write_yaml

    fs = small_fs.path
    images = make_images(tmp_path / "images")
    d = tiny_dict(fs / "run", data=image_data(images), max_steps=2, ckpt_every=2)
    run(d)  # step 2 written by one process
    first = fs / "run" / "checkpoints" / "step_00000002"
    before = snapshot(first)
    filler = fill(fs, leave=48 * PAGE)
    cfg = write_yaml(tmp_path / "c.yaml", {**d, "train": {**d["train"], "max_steps": 6, "timeout_s": 600}})
    results = wait_all(launch_direct(cfg, 2), timeout=300)
    for rank, (rc, _out, err) in enumerate(results):
        assert rc == EXIT_TEMPFAIL, f"rank {rank}: {err[-3000:]}"
        assert "Traceback" not in err, err[-3000:]
        assert "checkpoint step 4" in err and "re-run the same command" in err, err[-3000:]
    assert "the main process stopped" in results[1][2]
    assert sorted(p.name for p in (fs / "run" / "checkpoints").iterdir()) == ["step_00000002"]
    assert snapshot(first) == before and temp_files(fs / "run") == []
    filler.unlink()
