"""The metric registry: a metric registered from inside a test works through ``evaluate_fid.py`` (in-process)
and a sweep report with no other module touched; unknown names are one-line errors everywhere (CLI,
experiment config, sweep file) before anything is written; ``--kid`` / ``--pr`` stay aliases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_evaluate_cli import FakeExtractor, _images
from test_sweep import assert_refused, independent_stats, micro, run_cli, write
from vca_gen.metrics import Field, Metric, Needs, Param, Scored, cli, registry, save_statistics
from vca_gen.sweep.plan import validate
from vca_gen.sweep.spec import load_sweep

REPO = Path(__file__).resolve().parent.parent
BUILTIN = ["fid", "sfid", "kid", "pr", "density", "coverage"]


# ----------------------------------------------------------------------------- a metric added by a test
def _mean_gap(inp, params):
    """A toy metric: sum_d |mu_samples - mu_ref|^power, with a note."""
    gap = float((np.abs(inp.samples.mu - inp.ref.mu) ** params["power"]).sum())
    return Scored({"mean_gap": gap, "mean_gap_power": params["power"]}, [f"mean_gap: power {params['power']}"])


@pytest.fixture
def mean_gap():
    entry = registry.register(
        Metric(
            name="mean_gap",
            help="test metric: sum |mu_s - mu_r|^power",
            fields=(Field("mean_gap", "mean gap", ".3f", lower_is_better=True),),
            compute=_mean_gap,
            needs=Needs(ref_stats=True),
            params=(Param("power", 2, 1, "the power"),),
            info=("mean_gap_power",),
        )
    )
    yield entry
    registry.unregister("mean_gap")
    assert registry.names() == BUILTIN


@pytest.fixture
def fake_inception(monkeypatch):
    monkeypatch.setattr(cli, "InceptionFeatureExtractor", FakeExtractor)


def _cli(capsys, *args):
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _pair(tmp_path, n=30, n_ref=40):
    s, r = tmp_path / "s.npz", tmp_path / "r.npz"
    np.savez(s, arr_0=_images(n, 8, seed=1))
    np.savez(r, arr_0=_images(n_ref, 8, seed=2))
    return s, r


def test_a_registered_metric_works_through_evaluate_fid(tmp_path, capsys, mean_gap, fake_inception):
    s, r = _pair(tmp_path)
    out_json = tmp_path / "out.json"
    argv = [s, "--ref", r, "--metrics", "fid,mean_gap", "--mean-gap-power", "3", "--json-out", out_json]
    code, out, err = _cli(capsys, *argv, "--device", "cpu", "--no-progress")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    fx = FakeExtractor()
    mu_s = fx(_images(30, 8, seed=1)).pool.astype(np.float64).mean(0)
    mu_r = fx(_images(40, 8, seed=2)).pool.astype(np.float64).mean(0)
    assert result["mean_gap"] == pytest.approx(float((np.abs(mu_s - mu_r) ** 3).sum()), rel=1e-9)
    assert result["mean_gap_power"] == 3 and result["params"]["mean_gap"] == {"power": 3}
    assert result["metrics"] == ["fid", "mean_gap"] and result["fid"] > 0 and result["sfid"] is None
    assert "mean_gap: power 3" in result["notes"] and f"mean gap  : {result['mean_gap']:.4f}" in out
    assert json.loads(out_json.read_text()) == result
    # its parameter is checked like the built-in ones
    code, out, err = _cli(capsys, s, "--ref", r, "--metrics", "mean_gap", "--mean-gap-power", "0", "--device", "cpu")
    assert (
        code == 2
        and err.strip() == "evaluate_fid.py: error: --mean-gap-power=0 is not valid; accepted: an integer >= 1"
    )


def _sweep_file(tmp_path, metrics):
    s = micro(tmp_path, seeds=[0, 1, 2])
    s["evaluate"]["checkpoints"] = [2, "final"]
    s["evaluate"]["metrics"] = metrics
    return write(tmp_path, s)


def _score_commands(path, capsys) -> list[str]:
    """The score commands ``sweep.py run --dry-run`` lists (before any result exists)."""
    rc, out, err = run_cli(["run", path, "--dry-run"], capsys)
    assert rc == 0, err
    lines = [ln for ln in out.splitlines() if "evaluate_fid.py" in ln]
    assert len(lines) == 12  # 2 variants x 3 seeds x 2 checkpoints
    return lines


def _commit_results(path, values):
    """Every cell's committed result, made up by ``values(variant, seed, step) -> {field: value}``
    (with the hashes of the real plans)."""
    for p in validate(load_sweep(path)).cells:
        rec = {
            "variant": p.variant,
            "seed": p.seed,
            "experiment_hash": p.experiment_hash,
            "protocol_hash": p.protocol_hash,
            "max_steps": p.max_steps,
            "steps": p.steps,
            "metrics": {str(st): values(p.variant, p.seed, st) for st in p.steps},
            "train_minutes": 1.0,
            "sample_minutes": 0.5,
            "score_minutes": 0.25,
        }
        Path(p.result_file).parent.mkdir(parents=True, exist_ok=True)
        Path(p.result_file).write_text(json.dumps(rec))


def _check_field(res, key, table, variants=("mhsa", "vca"), baseline="mhsa"):
    for v in variants:
        mean, std, ci = independent_stats([table[v, s] for s in (0, 1, 2)])
        got = res["variants"][v]["metrics"][key]["final"]
        assert got["mean"] == pytest.approx(mean, rel=1e-12) and got["ci"] == pytest.approx(list(ci), rel=1e-12)
        if v != baseline:
            d_mean, _, d_ci = independent_stats([table[v, s] - table[baseline, s] for s in (0, 1, 2)])
            d = res["variants"][v]["paired"][key]
            assert d["mean"] == pytest.approx(d_mean, rel=1e-9) and d["ci"] == pytest.approx(list(d_ci), rel=1e-9)


def test_a_registered_metric_works_through_a_sweep_report(tmp_path, capsys, mean_gap):
    rng = np.random.default_rng(0)
    gaps = {(v, s): float(rng.uniform(1, 2)) for v in ("mhsa", "vca") for s in (0, 1, 2)}
    path = _sweep_file(tmp_path, ["fid", "mean_gap"])
    # the score command asks evaluate_fid.py for it (with the defaults every cell record carries)
    assert all(ln.rstrip().endswith("--metrics fid,sfid,mean_gap") for ln in _score_commands(path, capsys))
    _commit_results(path, lambda v, s, st: {"fid": 50.0 + s, "mean_gap": gaps[v, s]})
    rc, _, err = run_cli(["report", path], capsys)
    assert rc == 0, err
    res = json.loads((tmp_path / "results" / "results.json").read_text())
    assert res["metrics"] == ["fid", "mean_gap"]
    _check_field(res, "mean_gap", gaps)
    report = (tmp_path / "results" / "report.md").read_text()
    assert "## mean gap at the final checkpoint (lower is better)" in report
    assert f"{np.mean([gaps['vca', s] for s in (0, 1, 2)]):.3f} ± " in report  # its own format
    assert (tmp_path / "results" / "mean_gap_final.png").stat().st_size > 1000


def test_density_coverage_in_a_sweep_report_and_score_command(tmp_path, capsys):
    rng = np.random.default_rng(1)
    dens = {(v, s): float(rng.uniform(0.5, 1.2)) for v in ("mhsa", "vca") for s in (0, 1, 2)}
    cov = {(v, s): float(rng.uniform(0.3, 0.9)) for v in ("mhsa", "vca") for s in (0, 1, 2)}
    path = _sweep_file(tmp_path, ["fid", "density", "coverage"])
    lines = _score_commands(path, capsys)  # the real score command of every cell
    assert all(ln.rstrip().endswith("--metrics fid,sfid,density,coverage") for ln in lines), lines[0]
    _commit_results(path, lambda v, s, st: {"fid": 40.0 + s, "density": dens[v, s], "coverage": cov[v, s]})
    rc, _, err = run_cli(["report", path], capsys)
    assert rc == 0, err
    res = json.loads((tmp_path / "results" / "results.json").read_text())
    assert res["metrics"] == ["fid", "density", "coverage"]
    _check_field(res, "density", dens)
    _check_field(res, "coverage", cov)
    report = (tmp_path / "results" / "report.md").read_text()
    for label in ("density", "coverage"):
        assert f"## {label} at the final checkpoint (higher is better)" in report
        assert (tmp_path / "results" / f"{label}_vs_step.png").stat().st_size > 1000
    assert "## FID at the final checkpoint (lower is better)" in report


# ----------------------------------------------------------------------------- aliases and errors
def test_kid_and_pr_switches_are_aliases_of_metrics(tmp_path, capsys, fake_inception):
    s, r = _pair(tmp_path, 12, 12)
    common = ["--device", "cpu", "--no-progress", "--kid-subsets", "3", "--pr-k", "2"]
    code, out_a, err = _cli(capsys, s, "--ref", r, "--kid", "--pr", *common)
    assert code == 0, err
    code, out_b, err = _cli(capsys, s, "--ref", r, "--metrics", "fid,sfid,kid,pr", *common)
    assert code == 0, err
    a, b = (json.loads(o.strip().splitlines()[-1]) for o in (out_a, out_b))
    assert a == b and a["metrics"] == ["fid", "sfid", "kid", "pr"] and a["kid_subsets"] == 3
    assert a["kid"] is not None and a["precision"] is not None and a["density"] is None
    code, out, err = _cli(capsys, s, "--ref", r, "--metrics", "density", "--pr", *common)  # a switch adds
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["metrics"] == ["pr", "density"], err


@pytest.mark.parametrize(
    "metrics, needle",
    [
        ("fid,nope", "--metrics: unknown metric 'nope'; accepted: fid, sfid, kid, pr, density, coverage"),
        ("fid,fid", "--metrics: ['fid'] given more than once"),
        (",", "--metrics=',' is not valid; accepted: a non-empty list of fid, sfid"),
    ],
)
def test_cli_unknown_metric_is_one_line_and_writes_nothing(tmp_path, capsys, metrics, needle):
    s, r = _pair(tmp_path, 4, 4)
    code, out, err = _cli(capsys, s, "--ref", r, "--metrics", metrics, "--json-out", tmp_path / "o.json")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and needle in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.npz", "s.npz"]


def test_metrics_do_not_apply_to_make_ref(tmp_path, capsys):
    s, _ = _pair(tmp_path, 4, 4)
    with pytest.raises(SystemExit) as e:
        cli.main([str(s), "--make-ref", str(tmp_path / "ref.npz"), "--metrics", "density"])
    assert e.value.code == 2 and "--metrics score samples; they do not apply to --make-ref" in capsys.readouterr().err
    assert not (tmp_path / "ref.npz").exists()


def test_experiment_config_checks_train_fid_metrics(tmp_path):
    from vca_gen.errors import ConfigError
    from vca_gen.experiment.schema import load_config

    demo = REPO / "configs" / "demo.yaml"
    assert list(load_config(demo).train.fid.metrics) == ["fid"]  # the default: FID only, as before
    with pytest.raises(ConfigError, match=r"train.fid.metrics: unknown metric 'densty'; accepted: fid, sfid, kid"):
        load_config(demo, ["train.fid.metrics=[fid,densty]"])
    assert list(load_config(demo, ["train.fid.metrics=[fid,density,coverage]"]).train.fid.metrics)[1] == "density"
    # with train.fid.every, the reference must serve them: features stored, enough of them
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 8))
    from vca_gen.metrics import FeatureStatistics

    st = FeatureStatistics(x.mean(0), np.cov(x, rowvar=False), 20, "clean", resolution=(32, 32), source="t")
    bare = save_statistics(st, tmp_path / "bare.npz")
    on = ["train.fid.every=10", "train.fid.num_samples=20"]
    with pytest.raises(ConfigError, match="density, coverage need reference features, and .*bare.npz stores none"):
        load_config(demo, [*on, f"train.fid.ref={bare}", "train.fid.metrics=[fid,density,coverage]"])
    st.feats = x[:4].astype(np.float32)
    few = save_statistics(st, tmp_path / "few.npz")
    with pytest.raises(ConfigError, match="density: the k-NN radius .* more than k=5 .* the reference 4 features"):
        load_config(demo, [*on, f"train.fid.ref={few}", "train.fid.metrics=[density]"])
    assert load_config(demo, [*on, f"train.fid.ref={bare}"]).train.fid.every == 10  # FID needs no features


def test_sweep_file_metric_names_are_checked(tmp_path, capsys):
    s = micro(tmp_path)
    s["evaluate"]["metrics"] = ["fid", "dens"]
    assert_refused(tmp_path, capsys, s, "evaluate.metrics: unknown metric 'dens'; accepted: fid, sfid, kid, pr")
    s["evaluate"]["metrics"] = ["density"]
    assert_refused(tmp_path, capsys, s, "accepted: fid plus optional sfid, kid, pr, density, coverage")
    s = micro(tmp_path, references={"mhsa": {"fid": 1.0, "dens": 0.5}})
    assert_refused(tmp_path, capsys, s, "references.mhsa: unknown key(s) ['dens']", "density, coverage")
    # a statistics file without features cannot serve density
    x = np.random.default_rng(0).normal(size=(20, 8))
    from vca_gen.metrics import FeatureStatistics

    st = FeatureStatistics(x.mean(0), np.cov(x, rowvar=False), 20, "clean", resolution=(32, 32), source="t")
    s = micro(tmp_path)
    s["evaluate"].update(reference=str(save_statistics(st, tmp_path / "bare.npz")), metrics=["fid", "coverage"])
    assert_refused(tmp_path, capsys, s, "coverage needs reference features", "bare.npz stores none")


def test_register_refuses_taken_names_and_keys(mean_gap):
    def entry(name, key, info=()):
        return Metric(name, "x", (Field(key, key),), _mean_gap, Needs(ref_stats=True), info=info)

    with pytest.raises(ValueError, match="'mean_gap' is already registered"):
        registry.register(entry("mean_gap", "other"))
    with pytest.raises(ValueError, match=r"JSON key\(s\) \['kid_std'\] are taken"):
        registry.register(entry("spread", "kid_std"))
    with pytest.raises(ValueError, match=r"JSON key\(s\) \['n'\] are taken"):
        registry.register(entry("count", "n"))
    assert registry.names() == [*BUILTIN, "mean_gap"]
