"""Evidence before promotion: the paired statistics, the registry's promotion gate on real
registered models, and the gain, reference and seed spread a real (tiny) study reports."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading

import mlflow
import numpy as np
import pytest
from conftest import subprocess_env
from mlflow.tracking import MlflowClient
from scipy.stats import binomtest

from fmnist_exp import params as P
from fmnist_exp import stats
from fmnist_exp.classifier.pyfunc import format_predictions
from fmnist_exp.commands import tune
from fmnist_exp.data import FASHION_MNIST, load_dataset
from fmnist_exp.registry import gate
from fmnist_exp.study import setup
from fmnist_exp.study import spec as space

MODEL = "fmnist-classifier"

# ----------------------------------------------------------------------------- statistics


def labelled(b: int, c: int, both_right: int, both_wrong: int):
    """True labels and two models' answers with exactly these agreement counts."""
    n = b + c + both_right + both_wrong
    y = np.zeros(n, dtype=int)
    a_right = np.r_[np.ones(b), np.zeros(c), np.ones(both_right), np.zeros(both_wrong)].astype(bool)
    b_right = np.r_[np.zeros(b), np.ones(c), np.ones(both_right), np.zeros(both_wrong)].astype(bool)
    return y, np.where(a_right, 0, 1), np.where(b_right, 0, 2)


def test_mcnemar_exact_against_hand_computation():
    # b=1, c=9: p = 2 * (C(10,0) + C(10,1)) / 2^10 = 2 * 11 / 1024
    assert stats.mcnemar_exact(1, 9) == 2 * (math.comb(10, 0) + math.comb(10, 1)) / 2**10 == 0.021484375
    assert stats.mcnemar_exact(9, 1) == 0.021484375
    assert stats.mcnemar_exact(5, 0) == 2 / 2**5
    assert stats.mcnemar_exact(4, 4) == 1.0 and stats.mcnemar_exact(0, 0) == 1.0
    for b, c in [(30, 10), (300, 250), (2400, 2550)]:
        assert stats.mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_compare_counts_and_bootstrap_interval():
    y, pa, pb = labelled(b=1, c=9, both_right=85, both_wrong=5)
    r = stats.compare(y, pa, pb)
    assert (r.b, r.c, r.n) == (1, 9, 100)
    assert (r.acc_a, r.acc_b, r.diff) == (0.86, 0.94, pytest.approx(-0.08))
    assert r.p_value == 0.021484375

    y, pa, pb = labelled(b=60, c=20, both_right=880, both_wrong=40)
    r = stats.compare(y, pa, pb)
    assert r.diff == pytest.approx(0.04) and r.ci_low < r.diff < r.ci_high
    # Directly: resampling n images with replacement draws (B*, C*) ~ Multinomial(n; b/n, c/n, rest),
    # and the difference is (B* - C*) / n. Its percentile interval from an independent draw:
    counts = np.random.default_rng(1).multinomial(1000, [0.06, 0.02, 0.92], size=200_000)
    lo, hi = np.quantile((counts[:, 0] - counts[:, 1]) / 1000, [0.025, 0.975])
    assert r.ci_low == pytest.approx(lo, abs=0.002) and r.ci_high == pytest.approx(hi, abs=0.002)
    # and the normal approximation: sd = sqrt((b + c)/n - diff^2) / sqrt(n) = 0.00885
    sd = math.sqrt(0.08 - 0.04**2) / math.sqrt(1000)
    assert r.ci_low == pytest.approx(0.04 - 1.96 * sd, abs=0.003)
    assert r.ci_high == pytest.approx(0.04 + 1.96 * sd, abs=0.003)
    assert stats.compare(y, pa, pb) == r, "seeded: the same images give the same interval"
    assert "+4.00 points" in r.describe() and "b=60, c=20" in r.describe()
    assert "p<1e-300" in stats.compare(*labelled(b=5000, c=0, both_right=0, both_wrong=0)).describe()


# ----------------------------------------------------------------------------- the gate


def image_keys(x: np.ndarray) -> list[int]:
    """A number per image: its pixels weighted by fixed random 64-bit numbers (wrapping), one vectorised
    pass over a whole batch instead of a hash per image."""
    flat = np.asarray(x, dtype=np.uint8).reshape(len(x), -1).astype(np.uint64)
    weights = np.random.default_rng(0).integers(1, 2**63, size=flat.shape[1], dtype=np.uint64)
    return (flat @ weights).tolist()


class FixedAnswers(mlflow.pyfunc.PythonModel):
    """A classifier that answers a fixed label per test image, found by the image's pixels; its
    output has the served classifier's columns."""

    def __init__(self, answers: dict[int, int]):
        self.answers = answers

    def predict(self, context, model_input, params=None):
        labels = np.array([self.answers[k] for k in image_keys(model_input)])
        return format_predictions(np.eye(10)[labels], FASHION_MNIST)


def log_fixed(dataset, wrong: set[int]) -> str:
    """Log a FixedAnswers model, right on every test image except the indices in ``wrong``."""
    keys = image_keys(dataset.x_test)
    assert len(set(keys)) == len(keys), "test images are distinct, so a key names one image"
    labels = np.where(np.isin(np.arange(len(keys)), list(wrong)), (dataset.y_test + 1) % 10, dataset.y_test)
    answers = FixedAnswers(dict(zip(keys, labels.tolist(), strict=True)))
    with mlflow.start_run():
        return mlflow.pyfunc.log_model(name="classifier", python_model=answers, pip_requirements=[]).model_uri


def test_champion_moves_only_on_evidence(tracking, dataset):
    client = MlflowClient()
    n = len(dataset.y_test)
    champion_wrong = set(range(700))  # 93.00%

    def register(wrong, alpha=0.05):
        d = gate.register(log_fixed(dataset, wrong), MODEL, dataset, {"study": "gate"}, promote_alpha=alpha)
        return {"registered_version": d.version, "alias": d.alias, "decision": d.decision}

    def tags(version):
        return client.get_model_version(MODEL, str(version)).tags

    first = register(champion_wrong)
    assert (first["registered_version"], first["alias"]) == (1, "champion")
    assert "no champion before" in first["decision"]
    assert float(tags(1)["test_accuracy"]) == 0.93

    # 5 more right (fixes 5 of the champion's errors): p = 2/32 = 0.0625, noise at alpha 0.05
    barely = register(champion_wrong - set(range(5)))
    assert barely["alias"] == "challenger" and "not distinguishable from noise" in barely["decision"]
    t = tags(2)
    assert (int(t["gate_b"]), int(t["gate_c"]), int(t["gate_n"])) == (5, 0, n)
    assert float(t["gate_p_value"]) == pytest.approx(0.0625)
    assert float(t["test_accuracy"]) == 0.9305 and float(t["gate_champion_test_accuracy"]) == 0.93
    assert float(t["gate_diff"]) == pytest.approx(0.0005)
    assert float(t["gate_ci_low"]) <= 0.0005 <= float(t["gate_ci_high"])
    assert t["champion_version"] == "1" and "@challenger" in t["alias_decision"]
    assert int(client.get_model_version_by_alias(MODEL, "champion").version) == 1

    # worse: fewer images right, whatever the p-value
    worse = register(champion_wrong | set(range(700, 1000)))
    assert worse["alias"] == "challenger" and "not more test images right" in worse["decision"]
    assert (int(tags(3)["gate_b"]), int(tags(3)["gate_c"])) == (0, 300)

    # clearly better: fixes 400 of the champion's errors and makes 100 new ones, 300 more right
    clearly = register((champion_wrong - set(range(400))) | set(range(700, 800)))
    assert clearly["alias"] == "champion" and "better on the same test images" in clearly["decision"]
    t = tags(4)
    assert (int(t["gate_b"]), int(t["gate_c"])) == (400, 100)
    assert float(t["gate_p_value"]) < 1e-30 and float(t["gate_ci_low"]) > 0.02
    assert float(t["test_accuracy"]) == 0.96
    assert int(client.get_model_version_by_alias(MODEL, "champion").version) == 4
    assert int(client.get_model_version_by_alias(MODEL, "challenger").version) == 3

    # promote_alpha is the threshold: 5 more right of the new champion's errors passes at 0.1
    loose = register((champion_wrong - set(range(405))) | set(range(700, 800)), alpha=0.1)
    assert loose["alias"] == "champion" and tags(5)["promote_alpha"] == "0.1"


# ----------------------------------------------------------------------------- studies

# batch_size 32 (and a learning rate of 1e-2 where none is searched): a tiny budget that learns, shown on the
# validation images at p < 1e-6, not near 0.05: the gate registers no model at chance (issue 54)
TINY = """
description: Tiny MLP study for the gate tests.
family: mlp
budget: {{n_trials: 2, epochs: 1, train_samples: 1000, timeout: 0}}
fixed: {{hidden_units: '32', early_stopping_patience: 0, batch_size: 32, learning_rate: 1.0e-2}}
space:
  dropout: {{type: float, low: 0.0, high: 0.3}}
pruner: {{type: none}}
{extra}
"""


def study_file(tmp_path, name, extra=""):
    path = tmp_path / f"{name}.yaml"
    path.write_text(TINY.format(extra=extra))
    return str(path)


def nested(parent_id):
    return mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def parent_of(study_name):
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"attributes.run_name = 'tune {study_name}'", order_by=["start_time DESC"])
    return runs[0]


def test_study_reports_gain_over_default_reference(tracking, tmp_path, capsys):
    """On scikit-learn's digits (the gain is the same statement on any data; on 360 test images the
    default recipe trains in seconds). The command line's own output, from its main in this process: the
    SIGTERM test below runs `python -m fmnist_exp tune` as a process. A measured run as the reference is
    test_reference_off_seed_spread_and_a_measured_run_as_reference's (a study of its own)."""
    from fmnist_exp import cli as command_line

    study = study_file(tmp_path, "gain")
    code = command_line.main(["tune", "--family", "mlp", "--study", study, "--data", "digits", "--n_trials", "1"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    printed = json.loads(out.strip().splitlines()[-1])
    assert printed["reference"] == "the default recipe" and "gain over the default recipe" in out
    for k in ("gain_diff", "gain_ci_low", "gain_ci_high", "gain_p_value", "gain_b", "gain_c",
              "gain_candidate_test_accuracy", "gain_reference_test_accuracy"):
        assert k in printed, k

    parent = parent_of("gain")
    m, t = parent.data.metrics, parent.data.tags
    [ref] = [r for r in nested(parent.info.run_id) if r.info.run_name == "reference"]
    assert ref.data.tags["study_reference"] == "true" and ref.data.tags["optuna_study"] == "gain"
    # a lone (SQLite) worker trains it in a second process, beside the final retrain, nested all the same
    assert ref.data.tags["reference_background"] == "true" and ref.info.status == "FINISHED"
    # the default recipe as `mlp` trains it (hidden_units 512,256, not the study's fixed 32; its own epochs, not
    # the trials' 1: 1,000 images are 8 steps an epoch, so 25 epochs, 200 steps: params.with_epochs) on the
    # trials' images with the study's seed
    p = ref.data.params
    assert (p["hidden_units"], p["epochs"], p["train_samples"], p["seed"]) == ("512,256", "25", "1000", "42")
    assert t["gain_reference_run_id"] == ref.info.run_id and t["gain_reference"] == "the default recipe"
    assert t["gain_reference_epochs"] == "25" == ref.data.params["epochs"] and printed["reference_epochs"] == 25
    assert "gain over the default recipe (run " + ref.info.run_id + ", 25 epochs)" in out
    page = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/study/report.html")  # the study's own page
    assert "Reference: the default recipe, trained 25 epochs." in page
    assert m["gain_reference_test_accuracy"] == pytest.approx(ref.data.metrics["test_accuracy"], abs=1e-6)
    assert m["gain_candidate_test_accuracy"] == pytest.approx(m["best_test_accuracy"], abs=1e-6)
    assert m["gain_diff"] == pytest.approx((m["gain_b"] - m["gain_c"]) / m["gain_n"])
    assert m["gain_ci_low"] <= m["gain_diff"] <= m["gain_ci_high"]
    assert 0 <= m["gain_p_value"] <= 1  # underflows to 0 below 1e-308
    # every test image: the paired comparison is on the whole test split
    assert m["gain_n"] == len(load_dataset("digits").y_test) == 360
    assert printed["gain_p_value"] == pytest.approx(m["gain_p_value"])
    # the first champion carries its evidence itself, as tags and in its description
    version = MlflowClient().get_model_version(printed["model_name"], str(printed["registered_version"]))
    assert "no champion before" in version.tags["alias_decision"]
    for k in ("gain_diff", "gain_ci_low", "gain_ci_high", "gain_p_value", "gain_b", "gain_c", "gain_n",
              "gain_candidate_test_accuracy", "gain_reference_test_accuracy"):
        assert float(version.tags[k]) == pytest.approx(m[k], rel=1e-5, abs=1e-12), k
    assert version.tags["gain_reference_run_id"] == ref.info.run_id and version.tags["gain"] == t["gain"]
    assert version.tags["gain_reference_epochs"] == "25"
    assert t["gain"] in version.description and ref.info.run_id in version.description
    assert "no champion before" in version.description

    # resumed (on the study's own data, digits, recorded on the study): the finished reference is reused, not
    # trained again; the gain is reported again
    again = tune.run(P.tune_args({"family": "mlp", "study": study, "n_trials": 1})).flat()
    refs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string="tags.study_reference = 'true'")
    assert [r.info.run_id for r in refs] == [ref.info.run_id]
    assert again["reference_run_id"] == ref.info.run_id
    assert again["gain_reference_test_accuracy"] == m["gain_reference_test_accuracy"]


def output_until(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    """Read ``proc``'s output (its children's too: they share the pipe) up to the first line holding
    ``marker`` and return it all; fail, killing ``proc``, if it ends or ``timeout`` passes first."""
    seen: list[str] = []
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            seen.append(line)
            if marker in line:
                return "".join(seen)
    finally:
        watchdog.cancel()
    proc.kill()
    pytest.fail(f"no line with {marker!r} within {timeout} s (exit {proc.wait()}):\n" + "".join(seen)[-3000:])


@pytest.mark.slow  # a fault test (a signal to a real process and its child), like tests/test_faults.py
def test_sigterm_during_background_reference_ends_both_runs(tracking, tmp_path):
    """SIGTERM while the reference trains in its second process: both processes stop, the
    reference run ends FAILED with the parent (the final, whichever state the signal found it in,
    is not left RUNNING), and the second process is gone. On digits: the signal is sent the moment
    the reference prints its first epoch, which it does a few seconds after it starts; its 500
    epochs (tens of seconds) keep it provably mid-training when the signal lands."""
    study = study_file(tmp_path, "bgterm", extra="final: {epochs: 2}\n"
                                                  "reference: {params: {epochs: 500, early_stopping_patience: 0}}")
    cmd = [sys.executable, "-m", "fmnist_exp", "tune", "--family", "mlp", "--study", study, "--data", "digits",
           "--n_trials", "1"]
    mlflow.search_experiments()  # the store's tables exist before the tune process opens it: no migration race
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        # the event: the second process has trained (and, logged before it prints, recorded) an epoch
        before = output_until(proc, "[tune] reference epoch 1/500", timeout=300)
        refs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string="tags.reference_background = 'true'")
        assert len(refs) == 1 and refs[0].info.status == "RUNNING", (refs, before[-3000:])
        assert MlflowClient().get_metric_history(refs[0].info.run_id, "val_accuracy"), before[-3000:]
        children = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "fmnist_exp.study.reference"],
                                  capture_output=True, text=True).stdout.split()
        assert len(children) == 1, (children, before[-3000:])
        child = int(children[0])
        proc.send_signal(signal.SIGTERM)
        out = before + proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:  # a failed check above: its second process dies with it (PR_SET_PDEATHSIG)
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, out[-3000:]
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    status = {r.info.run_name: r.info.status for r in runs}
    assert status["tune bgterm"] == "FAILED" and status["reference"] == "FAILED", \
        (proc.returncode, status, out[-4000:])
    assert status["final (trial 0)"] in ("FAILED", "FINISHED") and "RUNNING" not in status.values(), \
        (status, out[-4000:])
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_reference_off_seed_spread_and_a_measured_run_as_reference(tracking, tmp_path, capsys):
    """On digits: no reference and a spread over seeds are the same statements on any data. Then a second study
    in the same store names one of these finals as its reference (a measured run): it is scored, nothing trained,
    and the second study's version meets the first's champion."""
    study = study_file(tmp_path, "seeds", extra="reference: off\nfinal: {epochs: 1, train_samples: 1000, seeds: 2}")
    summary = tune.run(P.tune_args({"family": "mlp", "study": study, "n_trials": 1, "data": "digits"})).flat()
    out = capsys.readouterr().out
    assert "[tune] reference: off" in out
    assert summary["reference"] == "off" and not any(k.startswith("gain_") for k in summary)
    parent = parent_of("seeds")
    assert parent.data.tags["gain_reference"] == "off"
    assert not any(k.startswith("gain_") for k in parent.data.metrics)
    kids = nested(parent.info.run_id)
    assert not [r for r in kids if r.data.tags.get("study_reference")]
    finals = sorted((r for r in kids if "final_of_trial" in r.data.tags), key=lambda r: r.data.tags["final_seed"])
    assert [r.info.run_name for r in finals] == ["final (trial 0, seed 42)", "final (trial 0, seed 43)"]
    assert [r.data.params["seed"] for r in finals] == ["42", "43"]
    accs = [r.data.metrics["test_accuracy"] for r in finals]
    m = parent.data.metrics
    assert m["final_seeds_n"] == 2
    assert m["final_seeds_test_accuracy_mean"] == pytest.approx(np.mean(accs))
    assert m["final_seeds_test_accuracy_std"] == pytest.approx(np.std(accs, ddof=1))
    best_val = max(finals, key=lambda r: r.data.metrics["val_final_accuracy"])
    assert summary["model_name"] == "digits-classifier"
    mv = MlflowClient().get_model_version(summary["model_name"], str(summary["registered_version"]))
    assert mv.tags["source_run_id"] == best_val.info.run_id == summary["best_run_id"]
    # the end-of-study summary names each seed, the spread and the seed registered
    assert summary["final_seeds"] == [42, 43] and summary["final_seeds_test_accuracy"] == pytest.approx(accs)
    assert summary["final_seed_registered"] == int(best_val.data.tags["final_seed"])
    assert parent.data.tags["final_seed_registered"] == best_val.data.tags["final_seed"]
    assert (f"final retrain over 2 seeds: test accuracy mean {np.mean(accs):.4f}, sd {np.std(accs, ddof=1):.4f}"
            in out and f"registered seed {best_val.data.tags['final_seed']} (best validation accuracy)" in out)

    # a measured run as the reference: scored, nothing trained
    rid = best_val.info.run_id
    other = study_file(tmp_path, "byrun", extra=f'reference: {{run_id: "{rid}"}}')
    byrun = tune.run(P.tune_args({"family": "mlp", "study": other, "n_trials": 1, "data": "digits"})).flat()
    assert byrun["reference"] == f"run {rid}" and byrun["reference_run_id"] == rid
    # its test accuracy, measured again on the same test images: what the run logged
    assert byrun["gain_reference_test_accuracy"] == pytest.approx(best_val.data.metrics["test_accuracy"], abs=1e-4)
    assert [r.info.run_name for r in nested(parent_of("byrun").info.run_id)] == ["trial 0"]
    # a version that met a champion: the gate's comparison beside the gain, on the version
    met = MlflowClient().get_model_version(byrun["model_name"], str(byrun["registered_version"]))
    assert not byrun["decision"].startswith("unchanged"), byrun["decision"]
    assert met.tags["gain_reference_run_id"] == rid
    assert "against champion v" in met.description and met.tags["gain"] in met.description


# ----------------------------------------------------------------------------- study files


@pytest.mark.parametrize("extra,message", [
    ("reference: best", "reference must be default, off"),
    ("reference:", "reference must be default, off"),
    ("reference: {run_id: 12345}", "quote the id"),
    ("reference: {params: {dropuot: 0.1}}", "'dropuot' is not a mlp parameter"),
    ("reference: {params: {dropout: 1.5}}", "dropout=1.5: must be in"),
    ("reference: {params: {train_samples: 3}}", "'train_samples' is the candidate's"),
    ("reference: {params: {seed: 3}}", "'seed' is the candidate's"),
    ("reference: {params: {val_fraction: 0.2}}", "'val_fraction' is the candidate's"),
    ("final: {epochs: 2, seeds: 0}", "final.seeds=0: must be an integer >= 1"),
    ("final: {epochs: 2, seeds: two}", "final.seeds='two'"),
    ("final: {epochs: 2, ensemble: true}", "final.ensemble averages the final retrain's seeds, but final.seeds is 1"),
    ("final: {seeds: 2, ensemble: 2}", "final.ensemble=2: must be true or false"),
    ("final: {seeds: 2, distill: 0.8}", "final.distill trains one network on the answers of the seeds' average, "
                                        "but final.ensemble is off"),
    ("final: {seeds: 2, ensemble: true, distill: 1.5}", "final.distill=1.5: must be a number from 0 (off) to 1"),
    ("final: {seeds: 2, ensemble: true, distill: yes}", "final.distill=True: must be a number"),
    ("final: {seeds: 2, ensemble: true, student: {hidden_units: '128'}}",
     "final.student sets the distilled network's parameters, but final.distill is off"),
    ("final: {seeds: 2, ensemble: true, distill: 0.8, student: 128}", "final.student=128: must be a mapping"),
    ("final: {seeds: 2, ensemble: true, distill: 0.8, student: {seed: 3}}", "final.student: 'seed' is not the "
                                                                            "student's to change"),
    ("final: {seeds: 2, ensemble: true, distill: 0.8, student: {val_fraction: 0.2}}", "'val_fraction' is not the "
                                                                                      "student's to change"),
    ("final: {seeds: 2, ensemble: true, distill: 0.8, student: {widht: 3}}", "final.student: 'widht' is not a mlp"),
    ("final: {seeds: 2, ensemble: true, distill: 0.8, student: {train_samples: 100}}", "'train_samples' is not the "
                                                                                       "student's to change"),
    ("final: {seeds: 2, ensemble: true, distill: 0.8, student: {data_dir: /tmp}}", "'data_dir' is not the "
                                                                                   "student's to change"),
    ("final: {seeds: 2, ensemble: true, distill: 0.8, student: {dropout: 1.5}}", "dropout=1.5: must be in"),
])
def test_bad_reference_or_seeds_refused(tmp_path, extra, message):
    with pytest.raises(P.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        space.load(study_file(tmp_path, "bad", extra), "mlp")


def test_ensemble_that_no_image_validates_is_refused_before_training(tracking, tmp_path, capsys):
    """Each seed holds out its own validation split; an ensemble is validated on the images all of
    them held out, and five splits of a tenth leave none: refused before any run starts, with one
    shared split or the share that would leave enough."""
    from fmnist_exp.study import ensemble
    from fmnist_exp.study import setup as study_setup

    path = study_file(tmp_path, "five", "final: {epochs: 1, seeds: 5, ensemble: true}")
    with pytest.raises(P.ConfigError, match=r"final.seeds=5 with ensemble: no training images are held out by all 5 "
                                            r"seeds' validation splits \(each seed holds out its own 10%, "
                                            r"val_fraction 0.1\), so the ensemble could not be validated: share one "
                                            r"split, final: \{split_seed: 42\} \(every seed then holds out the same "
                                            r"6,000 images\), use fewer seeds, or .* final: \{val_fraction: 0.32\}"):
        tune.run(P.tune_args({"study": path}))
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list"), "refused before any run"

    def held_out(final):
        s = study_setup.prepare(P.tune_args({"study": study_file(tmp_path, "s", f"final: {final}")}))
        return s, ensemble.held_out_by_all(s.ds, s.final_params({}, 42).val_fraction, s.final_split_seeds())[1]

    # the retrains' own share (final.val_fraction) is the one counted: five at 35% leave enough
    s, y = held_out("{seeds: 5, ensemble: true, val_fraction: 0.35}")
    assert s.final_params({}, 42).val_fraction == 0.35 and len(y) >= study_setup.FEW_HELD_OUT
    assert "warning" not in capsys.readouterr().err
    # three seeds at a tenth leave a few: allowed with a warning; those are the images the ensemble is scored on
    s, y = held_out("{seeds: 3, ensemble: true}")
    assert 0 < len(y) < 100
    assert (f"warning: final.seeds=3 with ensemble: {len(y)} training images are held out by all 3 seeds' "
            "validation splits" in capsys.readouterr().err)
    # five seeds sharing one split: every one of its images
    s, y = held_out("{seeds: 5, ensemble: true, split_seed: 42}")
    assert len(y) == 6000 and "warning" not in capsys.readouterr().err


def test_reference_recipe_is_named_params_on_the_candidates_images(tmp_path):
    import dataclasses

    spec = space.load(study_file(tmp_path, "named", "reference: {params: {dropout: 0.2}}\n"
                                                   "final: {epochs: 3, train_samples: 2000, seeds: 2, "
                                                   "split_seed: 9}"), "mlp")
    assert spec.reference == space.Reference("params", params={"dropout": 0.2}) and spec.final.seeds == 2
    # the trials': fixed hidden_units 32 and val_fraction 0.2, 1 epoch on 1,000 images, seed 7
    args = P.tune_args({"epochs": 1, "train_samples": 1000, "seed": 7})

    def recipe(spec):
        return setup.reference_recipe(args, dataclasses.replace(spec, fixed={**spec.fixed, "val_fraction": 0.2}),
                                FASHION_MNIST)

    p = recipe(spec)
    # the final retrain's images and the seed; the family's own epochs (not given: made concrete for the images
    # when the reference is trained, params.with_epochs), not the final's 3
    assert (p.dropout, p.hidden_units, p.epochs, p.train_samples, p.seed) == (0.2, (512, 256), None, 2000, 7)
    assert p.split_by() == 9  # and the final retrain's split
    # a named length
    spec = space.load(study_file(tmp_path, "long", "reference: {params: {epochs: 12}}\nfinal: {epochs: 3}"), "mlp")
    assert recipe(spec).epochs == 12
    # the default recipe: every default, the candidate's images and seed
    spec = space.load(study_file(tmp_path, "default", "final: {epochs: 30}"), "mlp")
    assert recipe(spec) == P.network("mlp", {"train_samples": 1000, "seed": 7, "val_fraction": 0.2})
    assert space.load(study_file(tmp_path, "off", "reference: off"), "mlp").reference.kind == "off"


def test_reference_run_checked_before_the_search(tracking, tmp_path, dataset):
    spec = space.load(study_file(tmp_path, "ghost", 'reference: {run_id: "0123abcd"}'), "mlp")
    with pytest.raises(P.ConfigError, match="reference run '0123abcd' is not in the tracking store"):
        setup.check_reference_run(spec, dataset)
    with mlflow.start_run(tags={"family": "baseline", "model_uri": "runs:/x/model"}) as run:
        pass
    spec = space.load(study_file(tmp_path, "base", f'reference: {{run_id: "{run.info.run_id}"}}'), "mlp")
    with pytest.raises(P.ConfigError, match="has no logged Keras model"):
        setup.check_reference_run(spec, dataset)
    with mlflow.start_run(tags={"family": "cnn", "model_uri": "runs:/x/model", "classifier_uri": "runs:/x/c"}) as run:
        mlflow.log_params({"data_sha256": "ab" * 32, "data_name": "digits"})
    spec = space.load(study_file(tmp_path, "other", f'reference: {{run_id: "{run.info.run_id}"}}'), "mlp")
    with pytest.raises(P.ConfigError, match="was trained on other data \\(digits, sha256 ababababab"):
        setup.check_reference_run(spec, dataset)
