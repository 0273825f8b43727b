"""The study report page: written on the parent run of a real study, opened offline in a real
headless browser; and the gain/gate sections rendered from the numbers a study logs."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from fmnist_exp import params as P
from fmnist_exp import stats
from fmnist_exp.commands import tune
from fmnist_exp.study import report

STUDY = """description: Does a second hidden layer help a small MLP? (report test)
family: mlp
budget: {n_trials: 2, epochs: 1, train_samples: 1000, timeout: 0}
fixed: {early_stopping_patience: 0}
space:
  dropout: {type: float, low: 0.0, high: 0.3}
  hidden_units: {type: widths, layers: [1, 2], units: [32, 64]}
pruner: {type: none}
reference: off
"""
def runs(filter_string):
    return mlflow.search_runs(search_all_experiments=True, output_format="list", filter_string=filter_string)


HEADINGS = ["Champion against the reference", "Promotion gate", "Leaderboard", "Optimization history",
            "Parameter importances", "Learning curves of the top trials"]


@pytest.mark.slow
def test_study_report_renders_offline(tracking, tmp_path, page):
    """On digits: nothing on the page is Fashion-MNIST's own."""
    study = tmp_path / "tiny.yaml"
    study.write_text(STUDY)
    # both places that write the page: a tune run that leaves registration to `register`, then `register`
    tune.run(P.tune_args({"family": "mlp", "study": str(study), "data": "digits", "register": False}))
    summary = tune.register_only(P.command("register", {"family": "mlp", "study": str(study),
                                                        "data": "digits"})).flat()
    [tuned] = runs("attributes.run_name = 'tune tiny'")
    [parent] = runs("attributes.run_name = 'register tiny'")
    trials = runs(f"tags.mlflow.parentRunId = '{tuned.info.run_id}'")
    assert len(trials) == 2 and summary["registered_version"] == 1
    client = mlflow.MlflowClient()
    for run in (tuned, parent):
        assert [a.path for a in client.list_artifacts(run.info.run_id, "study") if a.path == report.ARTIFACT]
    local = Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path=report.ARTIFACT,
                                                     dst_path=str(tmp_path / "download")))

    left = []  # every request that is not the file itself or an inline data: URI

    def outside(route):
        left.append(route.request.url)
        route.abort()

    page.route(lambda url: not url.startswith(("file:", "data:")), outside)
    page.goto(local.as_uri())
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)

    assert page.locator("h1").inner_text() == "Study tiny"  # the register run's page: the whole study
    assert page.locator("h2").all_inner_texts() == HEADINGS
    body = page.inner_text("body")
    assert "Does a second hidden layer help a small MLP?" in body
    assert "Reference: off" in body and "no champion before" in body
    rows = page.locator("table.leaderboard tr[data-trial]")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.trial)")) == ["0", "1"]
    assert "COMPLETE" in rows.first.inner_text() and "hidden_units" in page.locator("table.leaderboard").inner_text()
    for r in trials:
        href = f"#/experiments/{r.info.experiment_id}/runs/{r.info.run_id}"
        assert page.locator(f'table.leaderboard a[href="{href}"]').count() == 1
    widths = page.locator("img").evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) >= 2 and all(w > 0 for w in widths), widths  # history and curves at least
    assert left == []


def test_report_shows_gain_gate_and_absolute_links():
    """The comparisons as the parent run logs them (PairedComparison.fields) come back whole and
    are shown with interval, p and b/c; a tracking server gets absolute links, credentials dropped."""
    gain = stats.PairedComparison(acc_a=0.9321, acc_b=0.9201, diff=0.012, ci_low=0.008, ci_high=0.016, b=310, c=190,
                                  p_value=8.1e-8, n=10_000)
    metrics = {**gain.fields("gain_", "candidate", "reference"), "gain_b": 310.0}  # metrics are floats
    back = report.comparison(metrics, "gain_", "candidate", "reference")
    assert back.result == gain
    assert report.comparison(metrics, "gate_", "candidate", "champion") is None
    ui = report.ui_url("https://me:pw@mlflow.example:8443/base/")
    assert ui == "https://mlflow.example:8443/base"
    r = report.StudyReport(
        study_name="s", description="Does X help?", experiment_id="3", parent_run_id="p", ui_url=ui,
        trials=[report.TrialRow(0, "COMPLETE", 0.91, {"dropout": 0.123456}, 2, "abc", "3"),
                report.TrialRow(1, "PRUNED", None, {"dropout": 0.2}, 1, "def", "3")],
        figures={}, figures_skipped={"Parameter importances": "needs 2 complete trials"}, curves={},
        reference="default recipe", gain=back, gate=None, registration="v1 is @champion: no champion before")
    page = report.render(r)
    assert "+1.20 points (+0.80 to +1.60)" in page and "8.1e-08" in page and ">310<" in page and ">190<" in page
    assert "93.21%" in page and "92.01%" in page and "Reference: default recipe" in page
    assert 'href="https://mlflow.example:8443/base/#/experiments/3/runs/abc"' in page and "pw" not in page
    assert "0.1235" in page and "Not drawn: needs 2 complete trials" in page
    assert page.index('data-trial="0"') < page.index('data-trial="1"')  # complete before pruned
