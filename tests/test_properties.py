"""Property-based checks of what reads untrusted bytes and values: the request validator of the
served classifier and the IDX/CSV dataset readers. Whatever they are given, they answer with a
valid result or with their own error for people (BadRequest, DataError), never another exception.
Budgets stay small (a few dozen examples each) so the suite stays fast."""

from __future__ import annotations

import base64
import gzip
import io
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from fmnist_exp import data as D
from fmnist_exp.classifier.pyfunc import BadRequest, to_images
from fmnist_exp.data import FASHION_MNIST as FM

# one test process for the whole file: its module-scoped fixtures are made once (pyproject's --dist loadgroup)
pytestmark = pytest.mark.xdist_group("properties")

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])


def assert_valid_images(x: np.ndarray, max_batch: int) -> None:
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    assert x.ndim == 3 and x.shape[1:] == (28, 28) and 1 <= len(x) <= max_batch
    assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 255


def check_request(value, max_batch: int) -> None:
    try:
        x = to_images(value, FM, max_batch)
    except BadRequest as e:
        assert e.reason and not e.reason.startswith(("Traceback", "Failed")), e.reason
    else:
        assert_valid_images(x, max_batch)


# ----------------------------------------------------------------------------- requests

SHAPES = st.one_of(
    st.sampled_from([(1, 28, 28), (3, 28, 28), (2, 784), (0, 28, 28), (1, 28, 28, 3), (2, 27, 28), (1, 785),
                     (4, 28, 28), ()]),
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
)
DTYPES = st.sampled_from(["bool", "int8", "uint8", "int64", "uint64", "float16", "float32", "float64",
                          "complex64", "U2", "O"])
# what JSON can carry as a pixel, and then some
CELLS = st.one_of(st.integers(-5, 300), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                  st.booleans(), st.none(), st.text(max_size=2), st.just([]), st.just({}))


@st.composite
def arrays(draw):
    dtype, shape = draw(DTYPES), draw(SHAPES)
    if dtype != "O":
        return draw(hnp.arrays(np.dtype(dtype), shape))
    cells = np.empty(math.prod(shape), dtype=object)  # element by element: a cell may itself be a list
    for i in range(len(cells)):
        cells[i] = draw(CELLS)
    return cells.reshape(shape)


@st.composite
def nested_lists(draw):
    """A batch of valid images as JSON lists, then a few cells replaced and maybe a row cut short."""
    n = draw(st.integers(0, 4))
    flat = draw(st.booleans())
    images = draw(hnp.arrays(np.int64, (n, 784) if flat else (n, 28, 28), elements=st.integers(0, 255))).tolist()
    for _ in range(draw(st.integers(0, 3))):
        if not n:
            break
        i, r = draw(st.integers(0, n - 1)), draw(st.integers(0, 27))
        row = images[i] if flat else images[i][r]
        row[draw(st.integers(0, len(row) - 1))] = draw(CELLS)
    if n and draw(st.booleans()):
        row = images[0] if flat else images[0][draw(st.integers(0, 27))]
        del row[draw(st.integers(0, len(row) - 1)):]
    return images


@FAST
@given(value=st.one_of(arrays(), nested_lists(), CELLS), max_batch=st.sampled_from([1, 3, 1024]))
def test_to_images_gives_valid_images_or_bad_request(value, max_batch):
    check_request(value, max_batch)


@FAST
@given(images=nested_lists())
def test_to_images_accepts_exactly_the_clean_batches(images):
    """A batch of rectangular, in-range plain numbers is accepted; anything else is refused."""
    try:
        cells = np.array(images, dtype=object)
    except ValueError:  # ragged in a way numpy cannot hold
        cells = np.array([[]], dtype=object)
    clean = (len(images) > 0 and cells.shape[1:] in ((784,), (28, 28))
             and all(type(v) in (int, float) and math.isfinite(v) and 0 <= v <= 255 for v in cells.ravel()))
    try:
        x = to_images(images, FM)
    except BadRequest:
        assert not clean
    else:
        assert clean
        want = np.array(images, dtype=np.float32).reshape(len(images), -1)
        np.testing.assert_array_equal(x.reshape(len(images), -1), want)


@st.composite
def compact_inputs(draw):
    """The "inputs" object of a compact request: right or wrong keys, base64 of any bytes (often
    a whole number of images), junk text, PNG bytes with damage, values of the wrong type."""
    n = draw(st.integers(0, 3))
    raw = draw(st.one_of(st.binary(max_size=3000), st.binary(min_size=784 * n, max_size=784 * n)))
    text = draw(st.one_of(st.just(base64.b64encode(raw).decode()), st.text(max_size=12), CELLS))
    png = io.BytesIO()
    Image.fromarray(draw(hnp.arrays(np.uint8, draw(st.sampled_from([(28, 28), (5, 40), (1, 1)]))))).save(png, "PNG")
    damaged = bytearray(png.getvalue())
    for _ in range(draw(st.integers(0, 2))):
        damaged[draw(st.integers(0, len(damaged) - 1))] = draw(st.integers(0, 255))
    files = st.lists(st.one_of(st.just(base64.b64encode(bytes(damaged)).decode()), st.just(text)), max_size=4)
    key = draw(st.sampled_from(["uint8_b64", "png_b64", "pixels"]))
    return {key: draw(st.one_of(st.just(text), files))}


@FAST
@given(value=compact_inputs(), max_batch=st.sampled_from([1, 3, 1024]))
def test_compact_requests_give_valid_images_or_bad_request(value, max_batch):
    check_request(value, max_batch)


# ----------------------------------------------------------------------------- dataset files


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), rng.integers(0, 10, 3, dtype=np.uint8)


# around the limits of int64 and uint64, where a CSV reader's own integer parsing gives up
NUMBERS = st.one_of(st.integers(-300, 300), st.sampled_from([2**63 - 1, 2**63, 2**64, 10**30, -2**63 - 1]),
                    st.integers(2**63, 2**80), st.integers(-2**80, -2**63))
SPLICES = st.one_of(st.binary(max_size=8), NUMBERS.map(lambda i: str(i).encode()))


def corrupt(raw: bytes, data) -> bytes:
    """One damage per example, so that none hides another: cut the file short, insert junk or a
    (huge) number, or flip one to three bytes."""
    how = data.draw(st.sampled_from(["truncate", "insert", "flip"]), label="how")
    if how == "truncate":
        return raw[:data.draw(st.integers(0, len(raw) - 1), label="keep")]
    if how == "insert":
        at = data.draw(st.integers(0, len(raw)), label="at")
        return raw[:at] + data.draw(SPLICES, label="junk") + raw[at:]
    flipped = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3), label="flips")):
        flipped[data.draw(st.integers(0, len(raw) - 1), label="at")] ^= data.draw(st.integers(1, 255), label="xor")
    return bytes(flipped)


def assert_reads_or_names_file(read, path) -> None:
    try:
        read(path)
    except D.DataError as e:
        assert str(path) in str(e), str(e)


@FAST
@given(data=st.data(), images=st.booleans(), gz=st.booleans())
def test_idx_reader_names_the_corrupt_file(tmp_path, small, data, images, gz):
    x, y = small
    raw = idx_bytes(x, D.IDX_IMAGE_MAGIC) if images else idx_bytes(y, D.IDX_LABEL_MAGIC)
    raw = gzip.compress(raw, mtime=0) if gz else raw
    path = tmp_path / ("t10k-images-idx3-ubyte" if images else "t10k-labels-idx1-ubyte")
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(corrupt(raw, data))
    assert_reads_or_names_file(lambda p: D.read_idx(p, images=images), path)


def test_idx_reader_reads_the_uncorrupted_pair(tmp_path, small):
    x, y = small
    (tmp_path / "i").write_bytes(gzip.compress(idx_bytes(x, D.IDX_IMAGE_MAGIC)))
    (tmp_path / "l").write_bytes(idx_bytes(y, D.IDX_LABEL_MAGIC))
    np.testing.assert_array_equal(D.read_idx(tmp_path / "i", images=True), x)
    np.testing.assert_array_equal(D.read_idx(tmp_path / "l", images=False), y)


def csv_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    header = "label," + ",".join(f"pixel{i + 1}" for i in range(784))
    rows = [f"{label}," + ",".join(map(str, image.ravel())) for image, label in zip(x, y, strict=True)]
    return ("\n".join([header, *rows]) + "\n").encode()


@FAST
@given(data=st.data())
def test_csv_reader_names_the_corrupt_file(tmp_path, small, data):
    path = tmp_path / "fashion-mnist_test.csv"
    path.write_bytes(corrupt(csv_bytes(*small), data))
    assert_reads_or_names_file(D.read_csv, path)


def test_csv_reader_reads_the_uncorrupted_file(tmp_path, small):
    path = tmp_path / "fashion-mnist_test.csv"
    path.write_bytes(csv_bytes(*small))
    x, y = D.read_csv(path)
    np.testing.assert_array_equal(x, small[0])
    np.testing.assert_array_equal(y, small[1])
