"""A config typed once: run-defining declared on the fields, every field enumerable, every value's
range checked at load time, typed section objects for the trainer, train.py a thin CLI."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import typing
from pathlib import Path

import pytest

from vca_gen.errors import ConfigError
from vca_gen.experiment import schema as C
from vca_gen.utils.settings import setting

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs/demo.yaml"

# The hand-kept lists these declarations replace (as they were before the fields declared them).
OLD_RUN_DEFINING_TRAIN = (
    "seed",
    "global_batch_size",
    "lr",
    "betas",
    "eps",
    "weight_decay",
    "warmup_steps",
    "grad_clip",
    "ema_decay",
    "ema_warmup",
)
OLD_RUN_FREE_KEYS = {
    "model.grad_checkpointing",
    "model.init_from",
    "data.num_workers",
    "data.path",
    "data.verify",
    "data.strict",
}


# ----------------------------------------------------------------------------- run-defining fields
def test_derived_run_defining_lists_equal_the_hand_kept_ones():
    assert set(C.RUN_DEFINING_TRAIN) == set(OLD_RUN_DEFINING_TRAIN)
    assert len(C.RUN_DEFINING_TRAIN) == len(OLD_RUN_DEFINING_TRAIN)
    assert set(C.RUN_FREE_KEYS) == OLD_RUN_FREE_KEYS
    by_key = {f.key: f.run_defining for f in C.iter_fields()}
    assert {k for k, v in by_key.items() if v and k.startswith("train.")} == {
        f"train.{k}" for k in OLD_RUN_DEFINING_TRAIN
    }
    assert not any(by_key[k] for k in OLD_RUN_FREE_KEYS)
    assert by_key["model.attention_options"] and by_key["objective.flow.ode_method"] and by_key["data.seed"]
    assert not by_key["train.grid.seed"] and not by_key["name"] and not by_key["logging.tracker"]


def test_a_train_field_without_the_declaration_is_caught():
    @dataclasses.dataclass
    class Grown(C.TrainConfig):
        new_knob: float = 0.5  # says nothing about resume

    with pytest.raises(TypeError, match=r"Grown\.new_knob does not declare whether changing it breaks resume"):
        C.run_defining_fields(Grown, default=None)

    @dataclasses.dataclass
    class Declared(C.TrainConfig):
        new_knob: float = setting(0.5, run_defining=True)

    assert C.run_defining_fields(Declared, default=None) == (*C.RUN_DEFINING_TRAIN, "new_knob")
    # every field of the shipped TrainConfig declares it (the module would not import otherwise)
    assert all("run_defining" in f.metadata for f in dataclasses.fields(C.TrainConfig))


def test_resume_diff_follows_the_declarations():
    base = C.to_container(C.load_config(DEMO))
    for key, value in (("lr", 0.5), ("seed", 3), ("betas", [0.8, 0.9])):
        now = {**base, "train": {**base["train"], key: value}}
        assert list(C.run_defining_diff(base, now)) == [f"train.{key}"]
    for key, value in (("max_steps", 7), ("log_every", 3), ("timeout_s", 9.0), ("mixed_precision", "bf16")):
        now = {**base, "train": {**base["train"], key: value}}
        assert C.run_defining_diff(base, now) == {}
    now = {**base, "data": {**base["data"], "num_workers": 3, "seed": 5}}
    assert list(C.run_defining_diff(base, now)) == ["data.seed"]


# ----------------------------------------------------------------------------- iter_fields
def _leaf_keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        key = f"{prefix}{k}"
        out |= _leaf_keys(v, key + ".") if isinstance(v, dict) and not key.endswith("options") else {key}
    return out


def test_iter_fields_enumerates_every_config_key_with_its_type():
    fields = list(C.iter_fields())
    keys = [f.key for f in fields]
    assert len(keys) == len(set(keys))
    assert set(keys) == _leaf_keys(C.to_container(C.load_config(DEMO)))
    types = {f.key: f.type for f in fields}
    assert types["train.seed"] is int and types["train.lr"] is float and types["train.tf32"] is bool
    assert types["train.micro_batch_size"] == int | None and types["train.betas"] == list[float]
    assert types["model.attention_options"] == dict[str, typing.Any]
    assert {f.key: f.default for f in fields}["train.timeout_s"] == 1800.0


# ----------------------------------------------------------------------------- value checks at load
SEED_KEYS = [f.key for f in C.iter_fields() if f.key.rsplit(".", 1)[-1] == "seed"]
INT_KEYS = [f.key for f in C.iter_fields() if f.type in (int, int | None) and f.key not in SEED_KEYS]
FLOAT_KEYS = [f.key for f in C.iter_fields() if f.type in (float, float | None)]


def _load(*overrides: str):
    return C.load_config(DEMO, list(overrides))


def test_seed_keys_are_found():
    assert set(SEED_KEYS) == {"data.seed", "train.seed", "train.grid.seed", "train.fid.seed"}


@pytest.mark.parametrize("key", SEED_KEYS)
def test_seeds_must_fit_63_bits(key):
    for bad in (-1, 2**63):
        with pytest.raises(ConfigError, match=rf"{key}={bad} is not valid; accepted: an integer in \[0, 2\^63\)"):
            _load(f"{key}={bad}")
    assert C.to_container(_load(f"{key}={2**63 - 1}"))[key.split(".")[0]] is not None


@pytest.mark.parametrize("key", INT_KEYS)
def test_no_count_may_be_negative(key):
    with pytest.raises(ConfigError) as e:
        _load(f"{key}=-1")
    msg = str(e.value)  # the data section words it "data.KEY must be >= 0, got -1"
    assert (f"{key}=-1" in msg or f"{key} must be" in msg and "-1" in msg) and "\n" not in msg, msg


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_every_number_must_be_finite(key, bad):
    with pytest.raises(ConfigError) as e:
        _load(f"{key}={bad}")
    msg = str(e.value)
    assert key in msg and "accepted" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "bad,accepted",
    [
        ("0", "a number in (0.0, 1e9]"),
        ("-1", "a number in (0.0, 1e9]"),
        ("1e10", "a number in (0.0, 1e9]"),
        ("inf", "a finite number"),
        ("nan", "a finite number"),
    ],
)
def test_timeout_is_finite_positive_and_representable(bad, accepted):
    with pytest.raises(ConfigError, match=r"train\.timeout_s=.* is not valid; accepted: ") as e:
        _load(f"train.timeout_s={bad}")
    assert str(e.value).endswith(accepted.replace("1e9", "1000000000.0")), str(e.value)
    assert _load("train.timeout_s=1e9").train.timeout_s == 1e9


def test_precision_the_device_cannot_run_is_refused(monkeypatch):
    from vca_gen.train import helpers
    from vca_gen.utils import dist

    monkeypatch.setattr(dist, "use_cpu", lambda: True)
    assert helpers.resolve_mixed_precision("auto") == "no"
    assert helpers.resolve_mixed_precision("bf16") == "bf16"  # CPU autocast runs bf16
    with pytest.raises(ConfigError, match=r"train\.mixed_precision=fp16 cannot run .*accepted here: auto, no, bf16"):
        helpers.resolve_mixed_precision("fp16")


def test_fp16_on_cpu_exits_2_before_anything_is_written(tmp_path, capsys, monkeypatch):
    from vca_gen.train.cli import main
    from vca_gen.utils import dist

    monkeypatch.setattr(dist, "use_cpu", lambda: True)
    out = tmp_path / "run"
    assert main(["--config", str(DEMO), "train.mixed_precision=fp16", f"train.output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("train.py: error: train.mixed_precision=fp16"), err
    assert "Traceback" not in err and not out.exists()


# ----------------------------------------------------------------------------- typed sections
def test_the_trainer_reads_typed_section_objects():
    exp = C.typed_experiment(_load("train.lr=1", "train.betas=[0,0.5]", "train.ema_decay=1"))
    assert isinstance(exp, C.ExperimentConfig) and isinstance(exp.train, C.TrainConfig)
    assert isinstance(exp.train.grid, C.GridConfig) and isinstance(exp.train.fid, C.FidConfig)
    assert type(exp.train.lr) is float and exp.train.lr == 1.0 and type(exp.train.ema_decay) is float
    assert [type(b) for b in exp.train.betas] == [float, float]
    assert type(exp.model.input_size) is int and exp.model.input_size == 32  # derived from the data
    assert exp.model.attention_options["num_contrast_tokens"] == 16 and isinstance(exp.model.attention_options, dict)
    assert math.isfinite(exp.train.timeout_s)


def test_trainer_source_has_no_config_casts():
    import re

    src = "".join(p.read_text() for p in (REPO / "vca_gen/train").glob("*.py"))
    casts = re.findall(r"\b(?:int|float|bool|str)\((?:cfg|exp|t|m|f|g|s|d|self\.cfg|tr\.exp|self\.exp)\.[\w.]+\)", src)
    assert casts == []


# ----------------------------------------------------------------------------- CLI and signals
def test_train_py_is_a_thin_cli():
    text = (REPO / "train.py").read_text()
    assert len(text.splitlines()) <= 15 and "from vca_gen.train.cli import main" in text
    from vca_gen.train.cli import build_parser

    ap = build_parser()
    assert ap.prog == "train.py"
    args = ap.parse_args(["--config", "x.yaml", "train.lr=1"])
    assert args.config == "x.yaml" and args.overrides == ["train.lr=1"]


def test_install_stop_handlers_records_a_signal_and_restores():
    from vca_gen.train import signals

    before = signal.getsignal(signal.SIGUSR1)
    request = signals.install_stop_handlers()
    try:
        assert signals.install_stop_handlers() is request  # idempotent
        assert signals.installed_stop_request() is request and request.signum is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert request.signum == signal.SIGUSR1 and request.name == "SIGUSR1"
    finally:
        signals.restore_stop_handlers(request)
    assert signal.getsignal(signal.SIGUSR1) == before and signals.installed_stop_request() is None
