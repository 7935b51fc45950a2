"""Files are safe: every file sample.py and evaluate_fid.py write follows the umask (0644 under
022) and appears atomically; outputs never overwrite inputs (always refused) nor an existing
``--make-ref`` file (unless ``--overwrite``); an output folder that cannot be created is a one-line
error with exit 2. Also the helpers of :mod:`vca_gen.utils.io` themselves."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from test_evaluate_cli import FakeExtractor
from vca_gen.errors import UserError
from vca_gen.metrics import cli as eval_cli
from vca_gen.sample.cli import main as sample_main
from vca_gen.utils import io


@pytest.fixture
def umask():
    """``umask(value)`` sets the process umask for the test; the old one is restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda value: os.umask(value)
    os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Permission bits of every file and folder under ``root`` (relative path -> mode)."""
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in sorted(root.rglob("*"))}


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _images(n=12, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture
def fake_inception(monkeypatch):
    monkeypatch.setattr(eval_cli, "InceptionFeatureExtractor", FakeExtractor)


def evaluate_fid(capsys, *args):
    code = eval_cli.main([str(a) for a in args] + ["--no-progress", "--device", "cpu", "--threads", "1"])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluate_fid.py: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


# ------------------------------------------------------------------------------ sample.py
@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A tiny random DiT export (as tests/test_sample_cli.py makes one), 10 Animal-MNIST classes."""
    from safetensors.torch import save_file

    from vca_gen.experiment import schema as C
    from vca_gen.experiment.build import build_model

    cfg = C.config_from_dict(
        {
            "name": "tiny",
            "objective": {"kind": "diffusion"},
            "data": {"kind": "animal_mnist", "image_size": 32, "vae": None},
            "model": {
                "name": "DiT-S/4",
                "depth": 1,
                "hidden_size": 32,
                "num_heads": 2,
                "num_classes": 10,
                "learn_sigma": True,
                "attention": "vca",
                "attention_options": {"num_contrast_tokens": 4},
            },
        }
    )
    model = build_model(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "export"
    path.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(C.to_container(cfg)))
    return path


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o007, 0o660, 0o770)])
def test_sample_cli_files_follow_the_umask(export, tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    out = tmp_path / "new" / "s"
    assert (
        sample_main(
            [
                "--ckpt",
                str(export),
                "--out",
                str(out),
                "--num-samples",
                "10",
                "--steps",
                "2",
                "--shard-size",
                "4",
                "--save-png",
                "--grid-classes",
                "5",
                "--grid-per-class",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    got = modes(out)
    names = set(got)
    assert {
        "samples.npz",
        "sampling.json",
        "grid.png",
        "shard_00000.npz",
        "shard_00002.npz",
        "png",
        "png/000000.png",
        "png/000009.png",
    } <= names
    assert len([n for n in names if n.startswith("png/")]) == 10 and not [n for n in names if n.endswith(".tmp")]
    for name, mode in got.items():
        want = dir_mode if (out / name).is_dir() else file_mode
        assert mode == want, f"{name}: {oct(mode)}, expected {oct(want)} under umask {oct(mask)}"
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == dir_mode


def test_sample_out_equal_to_ckpt_is_refused(export, tmp_path, capsys):
    before = snapshot(export)
    for out, ckpt in (
        (export, export),
        (Path(str(export) + "/../export/."), export),
        (export / "model.safetensors", export / "model.safetensors"),
    ):
        assert sample_main(["--ckpt", str(ckpt), "--out", str(out), "--num-samples", "5", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sample.py: error: --out ") and "is the same path as the input" in err, err
        assert "--ckpt" in err and "Traceback" not in err
    assert snapshot(export) == before and sorted(p.name for p in export.iterdir()) == [
        "config.json",
        "model.safetensors",
    ]


# ------------------------------------------------------------------------------ evaluate_fid.py
@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)])
def test_evaluate_outputs_follow_the_umask(tmp_path, capsys, umask, fake_inception, mask, file_mode, dir_mode):
    s = tmp_path / "in" / "s.npz"
    s.parent.mkdir()
    np.savez(s, arr_0=_images())
    umask(mask)
    ref, js = tmp_path / "out" / "deep" / "ref.npz", tmp_path / "out" / "r1.json"
    code, out, err = evaluate_fid(capsys, s, "--make-ref", ref, "--json-out", js)
    assert code == 0, err
    js2 = tmp_path / "scores" / "r2.json"
    code, out2, err = evaluate_fid(capsys, s, "--ref", ref, "--json-out", js2)
    assert code == 0, err
    got = modes(tmp_path / "out") | modes(tmp_path / "scores")
    assert got == {"deep": dir_mode, "deep/ref.npz": file_mode, "r1.json": file_mode, "r2.json": file_mode}
    assert json.loads(js.read_text()) == json.loads(out.strip().splitlines()[-1])
    assert json.loads(js2.read_text())["fid"] == pytest.approx(0.0, abs=1e-6)  # the samples against themselves


def test_make_ref_onto_existing_file_needs_overwrite(tmp_path, capsys, fake_inception):
    s1, s2 = tmp_path / "s1.npz", tmp_path / "s2.npz"
    np.savez(s1, arr_0=_images(seed=1))
    np.savez(s2, arr_0=_images(seed=2))
    ref = tmp_path / "ref.npz"
    assert evaluate_fid(capsys, s1, "--make-ref", ref)[0] == 0
    before = ref.read_bytes()
    code, out, err = evaluate_fid(capsys, s2, "--make-ref", ref)
    assert code == 2 and out == ""
    assert_one_line_error(err, f"--make-ref {ref} already exists", "--overwrite")
    assert ref.read_bytes() == before
    code, _, err = evaluate_fid(capsys, s2, "--make-ref", ref, "--overwrite")
    assert code == 0, err
    assert ref.read_bytes() != before
    with np.load(ref) as z:
        assert str(s2) in json.loads(str(z["vca_gen_meta"]))["source"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.npz", "s1.npz", "s2.npz"]  # no temp files left


def test_output_that_is_an_input_is_always_refused(tmp_path, capsys, fake_inception):
    s = tmp_path / "s.npz"
    np.savez(s, arr_0=_images())
    ref = tmp_path / "ref.npz"
    assert evaluate_fid(capsys, s, "--make-ref", ref)[0] == 0
    link = tmp_path / "hard_link_to_s.npz"
    os.link(s, link)
    before = snapshot(tmp_path)
    cases = [
        ([s, "--make-ref", s], "--make-ref", "SAMPLES"),
        ([s, "--make-ref", s, "--overwrite"], "--make-ref", "SAMPLES"),
        ([s, "--make-ref", link, "--overwrite"], "--make-ref", "SAMPLES"),  # same file, other name
        ([tmp_path / "." / "s.npz", "--make-ref", s], "--make-ref", "SAMPLES"),
        ([s, "--ref", ref, "--json-out", s], "--json-out", "SAMPLES"),
        ([s, "--ref", ref, "--json-out", ref], "--json-out", "--ref"),
        ([s, "--make-ref", tmp_path / "new.npz", "--json-out", tmp_path / "new.npz"], "--make-ref", "--json-out"),
    ]
    for args, out_flag, in_flag in cases:
        code, out, err = evaluate_fid(capsys, *args)
        assert code == 2 and out == "", (args, err)
        assert_one_line_error(err, out_flag, in_flag, "same path")
    assert snapshot(tmp_path) == before


def test_uncreatable_output_folder_is_a_one_line_error(tmp_path, capsys, fake_inception):
    s = tmp_path / "s.npz"
    np.savez(s, arr_0=_images())
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    ref = tmp_path / "ref.npz"
    assert evaluate_fid(capsys, s, "--make-ref", ref)[0] == 0
    before = snapshot(tmp_path)
    for args, flag in (
        ([s, "--make-ref", blocker / "sub" / "ref.npz"], "--make-ref"),
        ([s, "--ref", ref, "--json-out", blocker / "r.json"], "--json-out"),
        ([s, "--make-ref", tmp_path], "--make-ref"),
    ):  # a folder is not a file
        code, out, err = evaluate_fid(capsys, *args)
        assert code == 2 and out == ""
        assert_one_line_error(err, flag, str(blocker) if "a_file" in str(args[-1]) else "existing folder")
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_folder_is_a_one_line_error(tmp_path, capsys, fake_inception):
    s = tmp_path / "s.npz"
    np.savez(s, arr_0=_images())
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, _, err = evaluate_fid(capsys, s, "--make-ref", locked / "x" / "ref.npz")
        assert code == 2
        assert_one_line_error(err, "no permission", str(locked))
    finally:
        locked.chmod(0o755)


def test_unreadable_image_in_a_folder_is_a_one_line_error(tmp_path, capsys, fake_inception):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(_images(3)):
        Image.fromarray(img).save(folder / f"{i}.png")
    (folder / "9_broken.png").write_bytes(b"not a png")  # sorted last: found while streaming, in a worker
    code, out, err = evaluate_fid(capsys, folder, "--make-ref", tmp_path / "ref.npz", "--num-workers", "1")
    assert code == 2 and out == ""
    assert_one_line_error(err, "9_broken.png", "cannot read this image", "cannot identify image file")
    assert not (tmp_path / "ref.npz").exists()


# ------------------------------------------------------------------------------ utils.io helpers
def test_atomic_helpers_follow_the_umask_and_leave_nothing_on_failure(tmp_path, umask):
    umask(0o027)
    io.atomic_savez(tmp_path / "a.npz", x=np.arange(3))
    io.atomic_savez(tmp_path / "b", compressed=True, x=np.arange(3))  # exactly this name: no .npz added
    io.atomic_write_json(tmp_path / "c.json", {"k": 1})
    with io.atomic_path(tmp_path / "d.bin") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".d.bin.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"payload")
    assert modes(tmp_path) == {"a.npz": 0o640, "b": 0o640, "c.json": 0o640, "d.bin": 0o640}
    with np.load(tmp_path / "b") as z:
        assert z["x"].tolist() == [0, 1, 2]
    before = snapshot(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with io.atomic_path(tmp_path / "d.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with io.atomic_open(tmp_path / "c.json", "w", durable=False) as f:
            f.write("half")
            raise RuntimeError("boom")
    assert snapshot(tmp_path) == before


def test_refuse_helpers(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    a.write_bytes(b"x")
    (tmp_path / "sym.npz").symlink_to(a)
    for same in (a, tmp_path / "sym.npz", tmp_path / "sub" / ".." / "a.npz"):
        with pytest.raises(io.UnsafeWriteError, match="same path"):
            io.refuse_input_as_output({"--out": same}, {"IN": a})
    io.refuse_input_as_output({"--out": b, "--log": None}, {"IN": a, "--ref": None})  # distinct: fine
    io.refuse_input_as_output([b], [a])
    with pytest.raises(io.UnsafeWriteError, match="--out .* and --log .* are the same path"):
        io.refuse_input_as_output({"--out": b, "--log": tmp_path / "." / "b.npz"}, {})
    with pytest.raises(io.UnsafeWriteError, match=r"--make-ref .*a\.npz already exists.*pass --overwrite"):
        io.refuse_overwrite(a, False, "--make-ref")
    io.refuse_overwrite(a, True, "--make-ref")
    io.refuse_overwrite(b, False, "--make-ref")
    with pytest.raises(io.UnsafeWriteError, match="existing folder"):
        io.refuse_overwrite(tmp_path, True, "--out")
    with pytest.raises(io.OutputDirError, match="is not a folder"):
        io.make_parent_dir(a / "x" / "f.json", "--json-out")
    with pytest.raises(io.OutputDirError, match="is not a folder"):
        io.check_output_path(a / "x" / "f.json", "--json-out")
    assert (
        io.check_output_path(tmp_path / "new" / "deeper" / "f.json", "--json-out") and not (tmp_path / "new").exists()
    )
    assert issubclass(io.UnsafeWriteError, UserError) and issubclass(io.OutputDirError, UserError)
