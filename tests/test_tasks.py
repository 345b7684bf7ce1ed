"""Task registry and data loaders: shapes, determinism, errors that say what to do."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from esper.tolaria.data import (
    DataNotFoundError,
    TaskData,
    char_lm_data,
    iterate_batches,
)
from esper.tolaria.tasks import (
    DEFAULT_TASK,
    TaskSpec,
    build_task_host,
    get_task,
    list_tasks,
    register_task,
)

BUILTIN = {"digits", "pyref", "cifar10", "tinystories", "fashion", "pystd"}


# --------------------------------------------------------------------------- registry


def test_builtin_tasks_are_registered_and_digits_is_default():
    assert BUILTIN <= set(list_tasks())
    assert DEFAULT_TASK == "digits"
    for name in BUILTIN:
        spec = get_task(name)
        assert spec.name == name
        assert spec.needs_data_dir == (name in {"cifar10", "tinystories"})


def test_unknown_task_error_lists_valid_names():
    with pytest.raises(ValueError, match="unknown task 'mnist'") as err:
        get_task("mnist")
    for name in BUILTIN:
        assert name in str(err.value)


def test_register_rejects_duplicates_unless_replace(monkeypatch):
    from esper.tolaria import tasks

    # A private copy of the registry, so the test task does not leak into later tests.
    monkeypatch.setattr(tasks, "_TASKS", dict(tasks._TASKS))
    spec = dataclasses.replace(get_task("digits"), name="digits-test-copy")
    register_task(spec)
    with pytest.raises(ValueError, match="already registered"):
        register_task(spec)
    assert register_task(spec, replace=True) is spec
    assert get_task("digits-test-copy") is spec


@pytest.mark.parametrize(
    ("field", "value"),
    [("topology", "rnn"), ("optimizer", "adam"), ("epochs", 0), ("lr", 0.0), ("slots", ())],
)
def test_taskspec_validates_on_construction(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(get_task("digits"), **{field: value})


# --------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_standardisation():
    data = get_task("digits").load(None, seed=0)
    assert data.train_x.shape == (1151, 1, 8, 8) and data.val_x.shape == (287, 1, 8, 8)
    assert data.test_x.shape == (359, 1, 8, 8) and data.test_y.shape == (359,)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert data.num_classes == 10 and data.vocab is None
    assert abs(data.train_x.mean().item()) < 1e-5
    assert abs(data.train_x.std().item() - 1.0) < 1e-5
    # Stratified: every class has its share (~29) of the 287 validation images, and (~36) of
    # the 359 test images.
    assert torch.bincount(data.val_y, minlength=10).min() >= 28
    assert torch.bincount(data.test_y, minlength=10).min() >= 35


def test_digits_split_is_deterministic_per_seed():
    a, b, c = (get_task("digits").load(None, seed=s) for s in (0, 0, 1))
    for field in ("train_x", "train_y", "val_x", "val_y"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.val_x, c.val_x)
    assert not torch.equal(a.train_y, c.train_y)
    # The test split is the same images for every seed, and none of them is trained on.
    assert torch.equal(a.test_y, c.test_y)
    train_rows = {tuple(r.tolist()) for r in a.train_x.flatten(1)}
    assert not any(tuple(r.tolist()) in train_rows for r in a.test_x.flatten(1))


def test_digits_host_is_small_and_fits_data():
    spec = get_task("digits")
    data = spec.load(None, seed=0)
    host = build_task_host(spec, data)
    assert host.topology == "cnn" and host.config["num_classes"] == 10
    assert sum(p.numel() for p in host.parameters()) < 5000
    assert set(spec.slots) <= set(host.injection_points)
    assert host(data.val_x[:5]).shape == (5, 10)


# --------------------------------------------------------------------------- character LM


def test_pyref_vocab_windows_and_shift():
    from pydoc_data.topics import topics

    data = get_task("pyref").load(None, seed=0)
    text = "".join(topics[k] for k in sorted(topics))
    assert data.vocab == "".join(sorted(set(text)))
    assert data.num_classes == len(data.vocab)
    assert data.train_x.shape == (32768, 64) and data.train_x.dtype == torch.int64
    assert data.val_x.shape == (512, 64) and data.test_x.shape == (512, 64)
    assert torch.equal(data.train_x[:, 1:], data.train_y[:, :-1])
    assert torch.equal(data.val_x[:, 1:], data.val_y[:, :-1])
    assert torch.equal(data.test_x[:, 1:], data.test_y[:, :-1])
    # Validation windows are real text from 80-90% of it, test windows from the last 10%.
    n = len(text)
    for split, (lo, hi) in (("val_x", (0.8, 0.9)), ("test_x", (0.9, 1.0))):
        rows = getattr(data, split)
        for row in (rows[0], rows[-1]):
            window = "".join(data.vocab[i] for i in row.tolist())
            assert window in text[int(n * lo) - 1 : int(n * hi) + 1], split


def test_char_lm_is_deterministic_and_decodes_to_the_text():
    text = "".join(f"line {i}: the quick brown fox\n" for i in range(200))
    a = char_lm_data(text, block_size=16, seed=3, n_train_windows=50, max_val_windows=7)
    b = char_lm_data(text, block_size=16, seed=3, n_train_windows=50, max_val_windows=7)
    c = char_lm_data(text, block_size=16, seed=4, n_train_windows=50, max_val_windows=7)
    assert torch.equal(a.train_x, b.train_x) and not torch.equal(a.train_x, c.train_x)
    assert torch.equal(a.val_x, c.val_x)  # validation does not depend on the seed
    assert a.val_x.shape == (7, 16)
    row = a.train_x[0].tolist() + [a.train_y[0, -1].item()]
    assert "".join(a.vocab[i] for i in row) in text[: int(len(text) * 0.9)]


def test_char_lm_rejects_too_short_text():
    with pytest.raises(ValueError, match="too short"):
        char_lm_data("abc" * 5, block_size=16, seed=0)


def test_pyref_host_takes_vocab_from_data():
    spec = get_task("pyref")
    data = spec.load(None, seed=0)
    host = build_task_host(spec, data)
    assert host.config["vocab_size"] == data.num_classes
    assert set(spec.slots) <= set(host.injection_points)
    assert host(data.val_x[:2]).shape == (2, 64, data.num_classes)


def test_tinystories_loads_from_file_or_folder(tmp_path):
    story = "Once upon a time, a little cat named Tom found a big red ball. He was happy.\n"
    (tmp_path / "TinyStories-valid.txt").write_text(story * 60, encoding="utf-8")
    spec = get_task("tinystories")
    from_folder = spec.load(tmp_path, seed=0)
    from_file = spec.load(tmp_path / "TinyStories-valid.txt", seed=0)
    assert torch.equal(from_folder.train_x, from_file.train_x)
    assert from_folder.train_x.shape[1] == 128
    assert from_folder.vocab == "".join(sorted(set(story)))
    host = build_task_host(spec, from_folder)
    assert host.config["vocab_size"] == len(from_folder.vocab)


def test_tinystories_prefers_the_train_file(tmp_path):
    (tmp_path / "TinyStories-valid.txt").write_text("a" * 2000, encoding="utf-8")
    (tmp_path / "TinyStories-train.txt").write_text("b" * 2000, encoding="utf-8")
    assert get_task("tinystories").load(tmp_path, seed=0).vocab == "b"


def test_tinystories_missing_file_says_what_to_get(tmp_path):
    with pytest.raises(DataNotFoundError, match="TinyStories-train.txt") as err:
        get_task("tinystories").load(tmp_path, seed=0)
    assert "roneneldan/TinyStories" in str(err.value) and str(tmp_path) in str(err.value)


# --------------------------------------------------------------------------- CIFAR-10


def _write_cifar_batch(path, n, rng):
    batch = {
        b"batch_label": b"synthetic",
        b"labels": rng.integers(0, 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img.png"] * n,
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))  # the real files are protocol-2 pickles


@pytest.fixture
def cifar_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in (1, 2):
        _write_cifar_batch(folder / f"data_batch_{i}", 6, rng)
    _write_cifar_batch(folder / "test_batch", 4, rng)
    return tmp_path


def test_cifar10_missing_folder_names_it_and_where_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        get_task("cifar10").load(tmp_path, seed=0)
    message = str(err.value)
    assert "cifar-10-batches-py" in message and str(tmp_path) in message
    assert "cs.toronto.edu/~kriz/cifar.html" in message
    assert isinstance(err.value, FileNotFoundError)


def test_cifar10_loads_real_pickle_format_from_folder_or_parent(cifar_root):
    spec = get_task("cifar10")
    with pytest.warns(UserWarning, match="2 of 5"):
        data = spec.load(cifar_root, seed=0)
    with pytest.warns(UserWarning):
        same = spec.load(cifar_root / "cifar-10-batches-py", seed=0)
    assert torch.equal(data.train_x, same.train_x)
    # The 12 training images are split into train and validation; test_batch is the test split.
    assert data.train_x.shape[0] + data.val_x.shape[0] == 12 and data.val_x.shape[0] >= 1
    assert data.test_x.shape == (4, 3, 32, 32)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    # Normalised per channel with the train statistics.
    assert data.train_x.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (data.train_x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-4
    # The test split is the test batch, unshuffled.
    raw = pickle.loads((cifar_root / "cifar-10-batches-py" / "test_batch").read_bytes())
    assert data.test_y.tolist() == raw[b"labels"]
    pool = sorted(data.train_y.tolist() + data.val_y.tolist())
    train_labels = []
    for name in ("data_batch_1", "data_batch_2"):
        path = cifar_root / "cifar-10-batches-py" / name
        train_labels += pickle.loads(path.read_bytes())[b"labels"]
    assert pool == sorted(train_labels)
    host = build_task_host(spec, data)
    assert host(data.test_x).shape == (4, 10)


def test_cifar10_refuses_pickles_that_would_run_code(cifar_root):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = cifar_root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.warns(UserWarning), pytest.raises(pickle.UnpicklingError, match="refusing"):
        get_task("cifar10").load(cifar_root, seed=0)


# --------------------------------------------------------------------------- batching


def test_iterate_batches_covers_every_row_once_and_is_deterministic():
    x = torch.arange(103).float().unsqueeze(1)
    y = torch.arange(103)

    def order(seed):
        gen = torch.Generator().manual_seed(seed)
        batches = list(iterate_batches(x, y, 10, gen))
        for xb, yb in batches:
            assert torch.equal(xb.squeeze(1).long(), yb)  # rows stay paired
        return [b[1] for b in batches]

    first = order(0)
    assert [len(b) for b in first] == [10] * 10 + [3]
    assert sorted(torch.cat(first).tolist()) == list(range(103))
    assert torch.equal(torch.cat(first), torch.cat(order(0)))
    assert not torch.equal(torch.cat(first), torch.cat(order(1)))


def test_iterate_batches_unshuffled_and_drop_last():
    x, y = torch.zeros(25, 2), torch.arange(25)
    ys = [yb for _, yb in iterate_batches(x, y, 10, None, shuffle=False)]
    assert torch.equal(torch.cat(ys), y)
    gen = torch.Generator().manual_seed(0)
    sizes = [len(yb) for _, yb in iterate_batches(x, y, 10, gen, drop_last=True)]
    assert sizes == [10, 10]


def test_iterate_batches_rejects_bad_arguments():
    x, y = torch.zeros(5, 2), torch.zeros(4)
    with pytest.raises(ValueError, match="rows"):
        list(iterate_batches(x, y, 2, torch.Generator()))
    with pytest.raises(ValueError, match="Generator"):
        list(iterate_batches(x, x, 2, None))
    with pytest.raises(ValueError, match="batch_size"):
        list(iterate_batches(x, x, 0, torch.Generator()))


def test_taskdata_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="train_x has 3 rows"):
        TaskData(torch.zeros(3, 2), torch.zeros(2), torch.zeros(1, 2), torch.zeros(1), 2)


def test_taskspec_is_plain_data():
    spec = get_task("digits")
    assert isinstance(spec, TaskSpec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.epochs = 1  # type: ignore[misc]


def test_iterate_batches_limit_draws_a_fresh_sample_each_epoch():
    from esper.tolaria.data import iterate_batches

    x = torch.arange(100).unsqueeze(1)
    y = torch.arange(100)
    gen = torch.Generator().manual_seed(0)
    first = torch.cat([yb for _, yb in iterate_batches(x, y, 8, gen, limit=20)])
    second = torch.cat([yb for _, yb in iterate_batches(x, y, 8, gen, limit=20)])
    assert len(first) == len(second) == 20
    assert len(set(first.tolist())) == 20  # no repeats inside an epoch
    assert set(first.tolist()) != set(second.tolist())  # a fresh sample next epoch
    with pytest.raises(ValueError, match="limit"):
        next(iterate_batches(x, y, 8, gen, limit=0))
    assert get_task("pyref").epoch_samples == 2048


def test_digits_read_without_sklearn_equal_sklearns_load_digits():
    import numpy as np
    from sklearn.datasets import load_digits

    from esper.tolaria import data

    assert data._digits_csv() is not None, "the fast path should find sklearn's CSV"
    images, labels = data._digits_arrays()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images.astype(np.float32))
    assert np.array_equal(labels, bunch.target.astype(np.int64))
    assert images.dtype == np.float32 and labels.dtype == np.int64
