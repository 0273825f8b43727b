"""Your own images through every stage: scikit-learn's digits and folders of real image files
(digits written as PNGs, patches of scikit-learn's two colour photographs) trained, tuned, registered
under their own name, served by the real `mlflow models serve`, predicted and reproduced; and what
their data does not allow refused before any run is created."""

from __future__ import annotations

import base64
import io
import json

import mlflow
import numpy as np
import pytest
from conftest import MLFLOW, free_port, mlflow_run, running_server, subprocess_env
from PIL import Image

from fmnist_exp import data as D
from fmnist_exp import params as P
from fmnist_exp.data import FASHION_MNIST
from fmnist_exp.model import augment, networks, wrappers

# one test process for the whole file: its module-scoped fixtures are made once (pyproject's --dist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("own_data")]
DIGITS = tuple(str(d) for d in range(10))
TINY_STUDY = """description: {what}
family: cnn
budget: {{n_trials: 2, epochs: 2, train_samples: 0, timeout: 0}}
fixed: {{early_stopping_patience: 0, dense_units: 16, batch_size: 32{fixed}}}
space:
  learning_rate: {{type: float, low: 1.0e-3, high: 3.0e-3, log: true}}
  filters: {{type: widths, layers: [1, 2], units: [8, 16]}}
pruner: {{type: none}}
sampler: {{type: random}}
final: {{epochs: 3}}
reference: {{params: {{filters: "8,16", dense_units: 16, epochs: 2, batch_size: 32}}}}
"""


@pytest.fixture(scope="module")
def digits():
    return D.load_dataset("digits")


@pytest.fixture(scope="module")
def photos():
    from sklearn.datasets import load_sample_images

    return load_sample_images().images  # china.jpg, flower.jpg: (427, 640, 3) uint8


def colour_folder(root, photos, per_class: int = 40):
    """DIR/<china|flower>/NNN.png: 24x24 colour patches of the two photographs (every 13th pixel row
    and column, across the whole picture), a real colour dataset of 2 x ``per_class`` images."""
    for name, photo in zip(("china", "flower"), photos, strict=True):
        (root / name).mkdir(parents=True)
        corners = [(y, x) for y in range(0, 427 - 24, 13) for x in range(0, 640 - 24, 13)]
        pick = np.random.default_rng(0).choice(len(corners), per_class, replace=False)
        for i, k in enumerate(pick):
            y, x = corners[k]
            Image.fromarray(photo[y:y + 24, x:x + 24]).save(root / name / f"{i:03d}.png")
    return root


def only_runs():
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


# ----------------------------------------------------------------------------- the stages, in-process


def test_networks_take_the_datasets_shape_and_classes(digits, photos, tmp_path):
    colour = D.load_dataset(str(colour_folder(tmp_path / "c", photos, 10)))
    assert colour.info.shape == (24, 24, 3) and colour.x_train.shape[1:] == (24, 24, 3)
    for info in (digits.info, colour.info):
        p, note = networks.fit_to_data(P.network("cnn"), info)
        m = networks.build(p, info)
        assert m.input_shape == (None, *info.array_shape) and m.output_shape == (None, info.num_classes)
    assert networks.fit_to_data(P.network("cnn"), digits.info)[0].filters == (32, 64, 128)
    assert "fit 3 pooling blocks" in networks.fit_to_data(P.network("cnn"), digits.info)[1]
    assert networks.fit_to_data(P.network("cnn"), FASHION_MNIST) == (P.network("cnn", {"filters": "32,64,128,256"}),
                                                                   None)
    with pytest.raises(P.ConfigError, match="below one pixel; 3 fit"):
        networks.fit_to_data(P.network("cnn", {"filters": "8,8,8,8"}), digits.info)
    with pytest.raises(P.ConfigError, match="tta_flip=true: in digits, a mirror image may not keep its label"):
        networks.fit_to_data(P.network("mlp", {"tta_flip": True}), digits.info)


def test_a_mirror_flips_the_width_never_the_channels(photos, tmp_path):
    info = D.load_dataset(str(colour_folder(tmp_path / "c", photos, 10))).info
    import keras

    probe = keras.Sequential([keras.Input(info.array_shape), keras.layers.Flatten()])  # answers its input
    flip = wrappers.with_flip_average(probe, info)
    x = np.random.default_rng(1).integers(0, 256, (2, *info.shape)).astype("float32")
    np.testing.assert_allclose(np.asarray(flip(x)), ((x + x[:, :, ::-1, :]) / 2).reshape(2, -1), rtol=1e-6)


def test_augmentation_leaves_mirrors_out_where_they_change_the_label(digits):
    kinds = {layer.__class__.__name__ for layer in
             augment.build_augmenter(P.network("cnn", {"augment": True}), digits.info).layers}
    assert "RandomFlip" not in kinds and "RandomTranslation" in kinds
    assert "RandomFlip" in {layer.__class__.__name__ for layer in
                            augment.build_augmenter(P.network("cnn", {"augment": True}), FASHION_MNIST).layers}


# ----------------------------------------------------------------------------- end to end


def test_digits_trained_served_with_its_class_names_and_reproduced(tracking, tmp_path, digits, capsys):
    """`mlflow run . -e cnn -P data=digits`: the plain recipe on 8x8 images uses the 3 blocks that fit and
    says so; the run records the dataset; `mlflow models serve` answers a real digit's PNG with its
    digit's name and takes (n, 8, 8), (n, 8, 8, 1) and (n, 64); reproduce (in-process: the CLI's main)
    rebuilds it bit for bit. Two epochs (a budget: the recipe's widths are what is checked)."""
    proc = mlflow_run("cnn", {"data": "digits", "epochs": 2}, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the 8x8 images of digits fit 3 pooling blocks" in proc.stdout + proc.stderr
    [run] = only_runs()
    p, tags = run.data.params, run.data.tags
    assert (p["data"], p["data_name"], p["data_shape"], p["data_classes"], p["data_flips"]) == (
        "digits", "digits", "8x8x1", "10", "false")
    assert p["data_sha256"] == digits.sha256 and p["data_test_count"] == str(len(digits.y_test))
    assert tags["arch"].startswith("cnn 32,64,128 ")
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"digits"}
    classes = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/class_names.json")
    assert list(classes.values()) == list(DIGITS)
    uri = tags["classifier_uri"]
    model = mlflow.pyfunc.load_model(uri)
    assert model.metadata.get_input_schema().inputs[0].shape == (-1, 8, 8)
    x = digits.x_test[:5]
    a = model.predict(x)
    assert a["class_name"].tolist() == [DIGITS[i] for i in a["label"]] and len(a["probabilities"][0]) == 10
    for same in (x[..., None], x.reshape(5, 64)):
        assert model.predict(same)["label"].tolist() == a["label"].tolist()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [MLFLOW, "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
           "-w", "1"]
    answers = model.predict(digits.x_test)["label"].to_numpy()
    right = int(np.flatnonzero(answers == digits.y_test)[0])  # a real test digit it gets right
    png = io.BytesIO()
    Image.fromarray(digits.x_test[right]).save(png, format="PNG")  # 8x8, as the dataset holds it
    body = json.dumps({"inputs": {"png_b64": [base64.b64encode(png.getvalue()).decode()]}}).encode()
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": tracking}
    import urllib.request

    with running_server(cmd, base + "/ping", cwd=tmp_path, env=env):
        request = urllib.request.Request(base + "/invocations", body, {"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"][0]
        assert answer["class_name"] == DIGITS[digits.y_test[right]]
        wrong = urllib.request.Request(base + "/invocations", json.dumps({"inputs": np.zeros((1, 28, 28)).tolist()})
                                       .encode(), {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(wrong, timeout=60)
        assert refused.value.code == 400 and "each image must be 8x8 pixels" in refused.value.read().decode()

    from fmnist_exp import cli as command_line

    capsys.readouterr()
    code = command_line.main(["reproduce", "--model_uri", f"runs:/{run.info.run_id}/model", "--exact", "true"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["bit_identical"] == 1.0


def photo_patches(root, photos, *, side: int = 32, train: int = 400, test: int = 100, seed: int = 3):
    """ROOT/{train,test}/<china|flower>/NNN.jpg: ``side``-pixel colour patches at random places in the two
    photographs, as a user cuts them (JPEG, quality 90). An easy two-class folder: scikit-learn's SVC scores
    0.955 on such held-out patches."""
    rng = np.random.default_rng(seed)
    for name, photo in zip(("china", "flower"), photos, strict=True):
        corners = [(y, x) for y in range(photo.shape[0] - side) for x in range(photo.shape[1] - side)]
        for i, k in enumerate(rng.choice(len(corners), train + test, replace=False)):
            folder = root / ("train" if i < train else "test") / name
            folder.mkdir(parents=True, exist_ok=True)
            y, x = corners[k]
            Image.fromarray(photo[y:y + side, x:x + side]).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def test_the_default_cnn_learns_an_easy_colour_folder(tracking, tmp_path, photos, capsys):
    """`cnn --data DIR` and nothing else, on 800 training patches (720 after validation, 6 steps an epoch):
    the test accuracy must beat 0.95. Before bn_settle, batch norm's statistics had not left their start when
    validation read them, and this folder (seed 3) scored 0.50 here (AMD EPYC Zen 4, 2026-11-29): chance, early
    stopping keeping the first epoch's weights while the training loss fell."""
    from fmnist_exp import cli as command_line

    folder = photo_patches(tmp_path / "patches", photos)
    capsys.readouterr()
    assert command_line.main(["cnn", "--data", str(folder), "--system_metrics", "false"]) == 0
    run = only_runs()[0]
    assert run.data.params["bn_settle"] == "True" and run.data.params["data_shape"] == "32x32x3"
    assert run.data.metrics["test_accuracy"] > 0.95, run.data.metrics
    # no epochs given: 6 steps an epoch, so up to 34 epochs (200 steps), said and logged (params.with_epochs)
    assert run.data.params["epochs"] == "34"
    assert "720 training images are 6 optimizer steps an epoch at batch 128: up to 34 epochs" in capsys.readouterr().out


def test_a_colour_folder_is_tuned_registered_under_its_name_and_predicted(tracking, tmp_path, photos, capsys):
    """A study on a folder of colour photographs' patches: every trial, the final retrain and the reference
    train on its 24x24x3 images; the champion is registered as <name>-classifier (not Fashion-MNIST's
    name), its version says which data; `predict` classifies a folder of the photos' patches by name.
    `tune` runs in-process (the CLI's main): no process is what this checks."""
    from fmnist_exp import cli as command_line

    # enough images and epochs to learn, shown on the validation images (the gate registers no model at chance:
    # 7 validation images of 80 could not show it), without batch normalisation, whose statistics a few dozen
    # steps leave unsettled (issue 54: the default recipe on small colour folders)
    folder = colour_folder(tmp_path / "scenes", photos, per_class=100)
    study = tmp_path / "scenes.yaml"
    # and 48 validation images (30% of 160), not 16: a model that learned is shown so at p < 1e-6, not ~0.01
    fixed = ", augment: true, aug_shift: 0.05, aug_rotate: 0.0, aug_zoom: 0.0, batch_norm: false, val_fraction: 0.3"
    study.write_text(TINY_STUDY.format(what="colour patches", fixed=fixed).replace("final: {epochs: 3}",
                                                                                   "final: {epochs: 10}"))
    capsys.readouterr()
    code = command_line.main(["tune", "--data", str(folder), "--study", str(study), "--system_metrics", "false"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["model_name"] == "scenes-classifier" and summary["alias"] == "champion"
    version = mlflow.MlflowClient().get_model_version_by_alias("scenes-classifier", "champion")
    assert (version.tags["data_name"], version.tags["data_shape"]) == ("scenes", "24x24x3")
    names = {r.info.run_name: r for r in only_runs()}
    assert {"trial 0", "trial 1", "reference"} <= set(names)
    assert all(r.data.params["data_shape"] == "24x24x3" for r in names.values() if "data_shape" in r.data.params)
    ds = D.load_dataset(str(folder))
    assert len(ds.y_test) == 40 and ds.test_split.startswith("held out by digest")
    new = tmp_path / "new"
    new.mkdir()
    for i in range(4):
        Image.fromarray(photos[i % 2][300 + i:340 + i, 500:540]).save(new / f"{i}.jpg")  # 40x40: resized to 24x24
    from fmnist_exp.serving.images import predict_files

    answers = predict_files([str(new)], "models:/scenes-classifier@champion")  # what `predict` prints
    assert len(answers) == 4 and set(answers["class_name"]) <= {"china", "flower"}


def test_what_the_data_does_not_allow_is_refused_before_any_run(tracking, tmp_path, digits, photos, capsys):
    """Each refused with what was wrong and what to do, exit 2, and no run created: a corrupt image
    (named), a cnn too deep for 8x8 digits, the default study (named: study=cnn) and its mirror-averaged answers
    on digits, a registered name holding another dataset's champion, a study created on other data. (The CLI in-process:
    the same code as a subprocess, without starting TensorFlow once per command.)"""
    from fmnist_exp import cli as command_line

    def run(*args: str) -> tuple[int, str, str]:
        code = command_line.main([*args, "--system_metrics", "false"])
        said = capsys.readouterr()
        return code, said.out, said.err

    bad = colour_folder(tmp_path / "bad", photos, 10)
    (bad / "china" / "004.png").write_bytes((bad / "china" / "004.png").read_bytes()[:60])
    checks = [
        (["cnn", "--data", str(bad)], "china/004.png: not a readable PNG/JPEG image"),
        (["cnn", "--data", "digits", "--filters", "16,32,64,128"], "below one pixel; 3 fit"),
        (["tune", "--data", "digits", "--study", "cnn"],
         "would shrink the 8x8 images of digits below one pixel; 3 fit: give at most 3 widths, e.g. "
         "filters=32,64,128; and tta_flip=true: in digits, a mirror image"),
        (["baseline", "--data", str(tmp_path / "nowhere")], "no such file or folder"),
    ]
    for args, said in checks:
        code, _, err = run(*args)
        assert code == 2 and said in err, (args, err[-2000:])
    assert only_runs() == []

    study = tmp_path / "d.yaml"
    study.write_text(TINY_STUDY.format(what="digits", fixed="").replace("n_trials: 2", "n_trials: 1")
                     .replace("final: {epochs: 3}", "final: {epochs: 1}").replace(
                         "reference: {params", "reference: off\n# {params"))
    code, _, err = run("tune", "--data", "digits", "--study", str(study), "--model_name", "shared")
    assert code == 0, err[-3000:]
    before = len(only_runs())
    other = colour_folder(tmp_path / "scenes", photos, 10)
    for args, said in [
        (["--study_name", "other", "--model_name", "shared"], "its @champion (version 1) was trained on digits"),
        ([], "study 'd' was created on digits"),
    ]:
        code, _, err = run("tune", "--data", str(other), "--study", str(study), *args)
        assert code == 2 and said in err, err[-2000:]
    assert len(only_runs()) == before
    # the study's own data when none is given: `register` needs only its name
    code, out, err = run("register", "--study_name", "d", "--model_name", "shared")
    assert code == 0 and '"decision": "unchanged' in out, err[-2000:]


def test_the_shipped_small_image_studies_fit_their_data(tracking, tmp_path, photos):
    """experiments/digits.yaml on digits and experiments/images.yaml on a 24x24 colour folder pass every check
    before training; images.yaml on 8x8 digits is refused (four blocks do not fit), before any run."""
    from fmnist_exp.study.setup import prepare

    folder = str(colour_folder(tmp_path / "c", photos, 10))
    for data, study in (("digits", "digits"), (folder, "images")):
        setup = prepare(P.tune_args({"data": data, "study": study}))
        assert setup.model_name == f"{setup.ds.info.name}-classifier"
    with pytest.raises(P.ConfigError, match="images.yaml on digits: .*3 fit"):
        prepare(P.tune_args({"data": "digits", "study": "images"}))
    assert only_runs() == []
