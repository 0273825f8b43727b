"""A study's report page: one self-contained HTML file, ``study/report.html`` on the study's
parent run, which the MLflow UI previews among the run's artifacts.

It answers, on one page: what the study asked, which trials it ran (leaderboard with links to
their runs), how the search went (Optuna's history and importances, as logged on the run), what
the champion bought over the reference and what the promotion gate decided (paired on the same
test images, with interval and McNemar p), and how the top trials learned. Everything is inline
(CSS, PNGs as data URIs), so the page makes no request: it renders offline, in the UI's
sandboxed preview and as a downloaded file alike.

:func:`gather` is the only function that reads MLflow; :func:`render` is pure: plain data in,
HTML out.
"""

from __future__ import annotations

import base64
import html
import io
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import optuna
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .. import stats
from ..data import recorded
from ..metrics import EPOCHS_RUN, VAL_ACC
from ..train import plots
from . import front as F
from .space import suggest
from .spec import StudySpec
from .summary import DISTILL_STUDENT, DISTILL_VS_ENSEMBLE, DISTILL_VS_SEED

ARTIFACT = "study/report.html"
TOP = 5  # trials whose learning curves are drawn
# Optuna's figures that artifacts.log_optuna_plots logged on the parent run, shown here as logged
FIGURES = {"optimization_history": "Optimization history", "param_importances": "Parameter importances"}


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str
    value: float | None
    params: dict  # as the study file names them (widths as "64,32"), not Optuna's encoding
    epochs: int
    run_id: str | None
    experiment_id: str | None


@dataclass(frozen=True)
class Comparison:
    """A paired comparison logged on the parent run (``gain_*`` or ``gate_*``), and who was compared."""

    a: str
    b: str
    result: stats.PairedComparison


@dataclass(frozen=True)
class StudyReport:
    study_name: str
    description: str
    experiment_id: str
    parent_run_id: str
    ui_url: str | None  # the tracking server's UI, when tracking goes to one over http
    trials: list[TrialRow]
    figures: dict[str, bytes]  # title -> PNG
    figures_skipped: dict[str, str]  # title -> why Optuna could not draw it
    curves: dict[int, list[float]]  # trial number -> val_accuracy per epoch, best trials first
    reference: str | None  # "off", the reference's description, or None (registration did not get there)
    gain: Comparison | None
    gate: Comparison | None
    registration: str  # the parent run's decision sentence
    ensemble: Comparison | None = None  # final.ensemble: the average against the best-validated seed
    distilled: list[Comparison] = field(default_factory=list)  # final.distill: the student against both
    distilled_seed: int = -1  # the best-validated seed it is compared with
    distilled_student: str = ""  # what it changed of the final recipe (final.student), as its run's tag says
    front: list[F.FrontPoint] | None = None  # several objectives: the complete trials as points
    front_figure: bytes | None = None  # Optuna's Pareto plot as logged
    constraints: dict[str, float] = field(default_factory=dict)  # the study's budget
    data: str = ""  # the dataset, as the parent run's data_* parameters name it
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S %Z"))


# ----------------------------------------------------------------------------- reading (MLflow)


def gather(study: optuna.Study, parent_run_id: str, spec: StudySpec, top: int = TOP) -> StudyReport:
    """Everything the page shows, read from the study and MLflow in one place."""
    client = MlflowClient()
    parent = client.get_run(parent_run_id)
    metrics, tags = parent.data.metrics, parent.data.tags
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.optuna_study = '{study.study_name}'")
    experiment_of = {r.info.run_id: r.info.experiment_id for r in runs}
    trials = [_row(t, spec, experiment_of) for t in study.trials]
    best = sorted(((t.run_id, t) for t in trials if t.state == "COMPLETE" and t.run_id and t.value is not None),
                  key=lambda pair: -(pair[1].value or 0.0))[:top]
    curves = {t.number: [m.value for m in sorted(client.get_metric_history(run_id, VAL_ACC), key=lambda m: m.step)]
              for run_id, t in best}
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, title in FIGURES.items():
            if f"plot_skipped_{name}" in tags:
                continue
            png = _download(client, parent_run_id, f"study/{name}.png", tmp)
            if png is not None:  # else not logged (e.g. a study with no finished trial)
                figures[title] = png
        front_figure = _download(client, parent_run_id, F.FRONT_PNG, tmp) if spec.goals.multi else None
    skipped = {title: tags[f"plot_skipped_{name}"] for name, title in FIGURES.items() if f"plot_skipped_{name}" in tags}
    return StudyReport(
        study_name=study.study_name, description=spec.description, experiment_id=parent.info.experiment_id,
        parent_run_id=parent_run_id, ui_url=ui_url(mlflow.get_tracking_uri()), trials=trials, figures=figures,
        figures_skipped=skipped, curves=curves, reference=_reference(tags),
        gain=comparison(metrics, "gain_", "candidate", "reference"),
        gate=comparison(metrics, "gate_", "candidate", "champion"),
        registration=tags.get("registration", "not registered"),
        ensemble=comparison(metrics, "ensemble_gain_", "ensemble", "seed"),
        distilled=[c for c in (comparison(metrics, DISTILL_VS_ENSEMBLE, "distilled", "ensemble"),
                               comparison(metrics, DISTILL_VS_SEED, "distilled", "seed")) if c is not None],
        distilled_seed=int(metrics.get("ensemble_gain_seed", -1)), distilled_student=tags.get(DISTILL_STUDENT, ""),
        front=F.points(study, spec.goals) if spec.goals.multi else None, front_figure=front_figure,
        constraints=spec.goals.constraints, data=_data(parent.data.params),
    )


def _data(params: dict[str, str]) -> str:
    """The study's dataset in a few words: name, image size, classes, test images and how they were held out."""
    data = recorded(params)
    split = data["data_test_split"]
    held = "the dataset's own test set" if split == "given" else split
    return (f"{data['data_name']}: {data['data_shape']} images, {data['data_classes']} classes, "
            f"{data.get('data_train_count', '?')} training and {data.get('data_test_count', '?')} test images "
            f"({held}), sha256 {data.get('data_sha256', '?')[:12]}")


def _download(client: MlflowClient, run_id: str, path: str, tmp: str) -> bytes | None:
    try:
        return Path(client.download_artifacts(run_id, path, tmp)).read_bytes()
    except (MlflowException, OSError):
        return None  # not logged (e.g. Optuna could not draw it)


def _row(t: optuna.trial.FrozenTrial, spec: StudySpec, experiment_of: dict) -> TrialRow:
    try:  # replay the suggestion to name parameters as the study file does
        params = suggest(optuna.trial.FixedTrial(t.params), spec.space)
        widths = [k for k in spec.space if spec.space[k].kind == "widths"]
        # and a builder's own (hp.Int, ...: define-by-run), by the names it gave them
        params.update({k: v for k, v in t.params.items()
                       if k not in spec.space and not any(k.startswith(f"{w}_") for w in widths)})
    except (ValueError, KeyError):  # a trial that failed before all its parameters were drawn
        params = dict(t.params)
    run_id = t.user_attrs.get("mlflow_run_id")
    value = t.values[0] if t.values else None  # validation accuracy, the first of several objectives
    return TrialRow(t.number, t.state.name, value, params, int(t.user_attrs.get(EPOCHS_RUN,
                    len(t.intermediate_values))), run_id, experiment_of.get(run_id))


def comparison(metrics: dict, prefix: str, a: str, b: str) -> Comparison | None:
    """The :class:`stats.PairedComparison` that ``PairedComparison.fields`` flattened into metrics."""
    try:
        get = {k: metrics[prefix + k] for k in ("diff", "ci_low", "ci_high", "p_value", "b", "c", "n")}
        result = stats.PairedComparison(acc_a=metrics[f"{prefix}{a}_test_accuracy"],
                                        acc_b=metrics[f"{prefix}{b}_test_accuracy"], diff=get["diff"],
                                        ci_low=get["ci_low"], ci_high=get["ci_high"], b=int(get["b"]),
                                        c=int(get["c"]), p_value=get["p_value"], n=int(get["n"]))
    except KeyError:
        return None
    return Comparison(a, b, result)


def ui_url(tracking_uri: str) -> str | None:
    """The tracking server's address for absolute links (credentials dropped), or None for a local store."""
    u = urlparse(tracking_uri)
    if u.scheme not in ("http", "https"):
        return None
    host = (u.hostname or "") + (f":{u.port}" if u.port else "")
    return f"{u.scheme}://{host}{u.path.rstrip('/')}"


def log_report(study: optuna.Study, parent_run_id: str, spec: StudySpec) -> None:
    """Write the page onto the parent run; a failure is tagged on the run and does not fail the study."""
    try:
        page = render(gather(study, parent_run_id, spec))
        MlflowClient().log_text(parent_run_id, page, ARTIFACT)
    except (MlflowException, OSError, ValueError) as e:
        print(f"[tune] study report not written: {type(e).__name__}: {e}", flush=True)
        MlflowClient().set_tag(parent_run_id, "report_skipped", f"{type(e).__name__}: {e}"[:500])


# ----------------------------------------------------------------------------- rendering (pure)

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1d2330; max-width: 1100px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #dde2ea; }
.question { font-size: 16px; color: #333; margin: 4px 0 10px; } .muted { color: #667085; }
table { border-collapse: collapse; margin: 6px 0; } th { background: #f5f7fa; }
th, td { padding: 4px 10px; border-bottom: 1px solid #eceff4; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } tr.best td { background: #eef7ee; }
.COMPLETE { color: #137333; } .PRUNED { color: #a15c00; } .FAIL { color: #b3261e; } .RUNNING { color: #667085; }
code { font-size: 12px; } img { max-width: 100%; border: 1px solid #eceff4; }
.note { background: #f5f7fa; padding: 8px 12px; border-left: 3px solid #8a94a6; }
"""


def render(r: StudyReport) -> str:
    """The whole page as one string."""
    counts = {s: sum(t.state == s for t in r.trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    body = [
        f"<h1>Study {_e(r.study_name)}</h1>",
        f'<p class="question">{_e(r.description)}</p>',
        *([f'<p class="muted">Data: {_e(r.data)}.</p>'] if r.data else []),
        f'<p class="muted">{len(r.trials)} trials: {counts["COMPLETE"]} complete, {counts["PRUNED"]} pruned, '
        f'{counts["FAIL"]} failed. Parent run {_run_link(r, r.experiment_id, r.parent_run_id)}. '
        f"Written {_e(r.created)}.</p>",
        "<h2>Champion against the reference</h2>", _gain(r),
        *(["<h2>The seeds' average against one seed</h2>", _ensemble(r)] if r.ensemble else []),
        *(["<h2>One network distilled from the average</h2>", _distilled(r)] if r.distilled else []),
        "<h2>Promotion gate</h2>", _gate(r),
        *(["<h2>Accuracy and cost: the front</h2>", _front(r)] if r.front is not None else []),
        "<h2>Leaderboard</h2>", _leaderboard(r),
        *[part for title in FIGURES.values() for part in _figure(r, title)],
        "<h2>Learning curves of the top trials</h2>", _curves(r),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Study {_e(r.study_name)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _e(x) -> str:
    return html.escape(str(x))


def _acc(x: float) -> str:
    return f"{100 * x:.2f}%"


def _run_link(r: StudyReport, experiment_id: str | None, run_id: str | None, text: str | None = None) -> str:
    """The run's path in the MLflow UI (relative to the UI), and the absolute link when a server is known."""
    if not run_id:
        return "-"
    path = f"#/experiments/{experiment_id or r.experiment_id}/runs/{run_id}"
    rel = f'<a href="{_e(path)}"><code>{_e(text or path)}</code></a>'
    return rel + (f' (<a href="{_e(r.ui_url + "/" + path)}">open</a>)' if r.ui_url else "")


def _comparison_table(c: Comparison) -> str:
    res = c.result
    p = f"{res.p_value:.3g}" if res.p_value > 0 else "&lt;1e-300"
    rows = [(f"{c.a} test accuracy", _acc(res.acc_a)), (f"{c.b} test accuracy", _acc(res.acc_b)),
            ("paired difference (95% CI)",
             f"{100 * res.diff:+.2f} points ({100 * res.ci_low:+.2f} to {100 * res.ci_high:+.2f})"),
            ("exact McNemar p", p),
            (f"b: {c.a} right, {c.b} wrong", str(res.b)), (f"c: {c.a} wrong, {c.b} right", str(res.c)),
            ("test images", f"{res.n:,}")]
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td class=\"num\">{v}</td></tr>" for k, v in rows) + "</table>"


def _reference(tags: dict) -> str | None:
    """What the gain was measured against, with a trained reference's length, and whether it learned anything."""
    ref = tags.get("gain_reference")
    if ref and "gain_reference_epochs" in tags:
        ref = f"{ref}, trained {tags['gain_reference_epochs']} epochs"
    if ref and tags.get("gain_reference_at_chance") == "true":
        ref = f"{ref}, at chance (it learned nothing: the difference below is not a gain)"
    return ref


def _gain(r: StudyReport) -> str:
    if r.reference == "off":
        return ('<p class="note">Reference: off (the study file says <code>reference: off</code>), '
                "so no gain was measured.</p>")
    if r.gain is None:
        return f'<p class="note">No gain measured: {_e(r.registration)}.</p>'
    return (f"<p>Reference: {_e(r.reference)}. Both models answered the same test images.</p>"
            + _comparison_table(r.gain))


def _kept(r: StudyReport) -> str:
    """What the study's last model is: registered, or its candidate where the gate found it at chance."""
    return "The candidate (not registered)" if r.registration.startswith("not registered") else "The registered model"


def _ensemble(r: StudyReport) -> str:
    assert r.ensemble is not None, "shown only when the study registered an ensemble"
    what = ("The distilled network's teacher averages" if r.distilled else f"{_kept(r)} averages")
    return (f"<p>{what} the final retrain's seeds (<code>final.ensemble</code>). Against "
            "the seed that would have been registered alone (the best validation accuracy), on the same test "
            "images:</p>" + _comparison_table(r.ensemble))


def _distilled(r: StudyReport) -> str:
    # a student of its own shape costs what that shape costs (its run's cost_* metrics), not a seed's
    student, cost = ((f" with {_e(r.distilled_student)} (<code>final.student</code>)", "its own shape's inference cost")
                     if r.distilled_student else ("", "one network's inference cost"))
    return (f"<p>{_kept(r)} is one network of the final recipe{student} fitted to the average's answers "
            f"(<code>final.distill</code>): {cost}. Against its teacher and against the "
            f"best-validated seed ({r.distilled_seed}), on the same test images:</p>"
            + "".join(_comparison_table(c) for c in r.distilled))


def _gate(r: StudyReport) -> str:
    decision = f"<p>Decision: {_e(r.registration)}</p>"
    if r.gate is None:
        return decision + ('<p class="muted">No paired comparison with a previous champion (there was none, or no '
                           "candidate was registered).</p>")
    return decision + _comparison_table(r.gate)


def _front(r: StudyReport) -> str:
    """The complete trials as points of the accuracy-cost trade-off, front first, each linked to its run."""
    assert r.front is not None, "shown only for a study with several objectives"
    budget = ", ".join(f"{k} &le; {v:g}" for k, v in r.constraints.items()) or "none"
    intro = (f"<p>On the front: feasible and no other feasible trial is as good on every objective and better "
             f"on one (Optuna's <code>best_trials</code>). Budget: {budget}. Validation accuracy only; the test "
             "split decides nothing here.</p>")
    if not r.front:
        return intro + '<p class="note">No complete trial.</p>'
    names = list(r.front[0].objectives)
    experiment_of = {t.number: t.experiment_id for t in r.trials}
    extra = [c for c in r.constraints if c not in names]
    head = "".join(f"<th>{_e(h)}</th>" for h in ["trial", *names, *extra, "feasible", "on front", "MLflow run"])
    rows = []
    for p in r.front:
        cells = [f'<td class="num">{p.trial}</td>', *(f'<td class="num">{_fmt(p.objectives[n])}</td>' for n in names),
                 *(f'<td class="num">{_fmt(p.costs.get(c, "-"))}</td>' for c in extra),
                 f"<td>{'yes' if p.feasible else 'no'}</td>", f"<td>{'yes' if p.on_front else ''}</td>",
                 f"<td>{_run_link(r, experiment_of.get(p.trial), p.run_id)}</td>"]
        best = ' class="best"' if p.on_front else ""
        rows.append(f'<tr{best} data-front-trial="{p.trial}">' + "".join(cells) + "</tr>")
    figure = _img(r.front_figure, "Pareto front") if r.front_figure else ""
    return intro + f'<table class="front"><tr>{head}</tr>' + "".join(rows) + "</table>" + figure


def _leaderboard(r: StudyReport) -> str:
    def key(t: TrialRow):
        return (t.state != "COMPLETE", -(t.value if t.value is not None else float("-inf")), t.number)

    names = list(dict.fromkeys(k for t in r.trials for k in t.params))
    head = "".join(f"<th>{_e(h)}</th>" for h in ["#", "trial", "state", VAL_ACC, *names, "epochs", "MLflow run"])
    rows = []
    for rank, t in enumerate(sorted(r.trials, key=key), 1):
        value = f"{t.value:.4f}" if t.value is not None else "-"
        cells = [f'<td class="num">{rank}</td>', f'<td class="num">{t.number}</td>',
                 f'<td class="{_e(t.state)}">{_e(t.state)}</td>', f'<td class="num">{value}</td>',
                 *[f"<td>{_e(_fmt(t.params.get(n, '')))}</td>" for n in names],
                 f'<td class="num">{t.epochs}</td>', f"<td>{_run_link(r, t.experiment_id, t.run_id)}</td>"]
        best = ' class="best"' if rank == 1 and t.state == "COMPLETE" else ""
        rows.append(f'<tr{best} data-trial="{t.number}">' + "".join(cells) + "</tr>")
    return f'<table class="leaderboard"><tr>{head}</tr>' + "".join(rows) + "</table>"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _figure(r: StudyReport, title: str) -> list[str]:
    if title in r.figures:
        return [f"<h2>{_e(title)}</h2>", _img(r.figures[title], title)]
    why = r.figures_skipped.get(title, "not logged on the run")
    return [f"<h2>{_e(title)}</h2>", f'<p class="note">Not drawn: {_e(why)}</p>']


def _curves(r: StudyReport) -> str:
    if not r.curves:
        return '<p class="note">No complete trial.</p>'
    by_number = {t.number: t for t in r.trials}
    fig = plots.metric_curves({f"trial {n}": v for n, v in r.curves.items()}, VAL_ACC,
                              f"{VAL_ACC} per epoch, top {len(r.curves)} trials")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plots.close(fig)
    links = "".join(f"<li>trial {n}: {_run_link(r, by_number[n].experiment_id, by_number[n].run_id)}</li>"
                    for n in r.curves)
    return _img(buf.getvalue(), "learning curves of the top trials") + f"<ul>{links}</ul>"
