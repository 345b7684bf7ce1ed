"""Datasets held in memory as tensors, their loaders, and a fast batch iterator.

Every loader takes ``(data_dir, seed)`` and returns a :class:`TaskData`; the same seed always
gives bit-identical tensors. Nothing is ever downloaded: the default tasks use data bundled with
scikit-learn and CPython, and the real benchmarks read local files. A missing file raises
:class:`DataNotFoundError` saying what was expected and where to get it, never a silent fallback
to random data.

Data lives in memory and is batched by index slicing (:func:`iterate_batches`), not by a
``DataLoader`` with worker processes: on a 2-core machine the workers cost more than they save.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch


class DataNotFoundError(FileNotFoundError):
    """A task's local data files are missing; the message says what to fetch and where to put it."""


@dataclass(frozen=True)
class TaskData:
    """A task's train, validation and (where it has one) test tensors.

    Image tasks: ``x`` is float32 ``(N, C, H, W)``, normalised with train statistics; ``y`` is
    int64 ``(N,)``. Language-model tasks: ``x`` is int64 ``(N, T)`` token windows and ``y`` is
    int64 ``(N, T)``, the next token at every position (``x`` shifted left by one).

    Attributes:
        train_x, train_y, val_x, val_y: the tensors described above.
        num_classes: classes, or the vocabulary size for language-model tasks.
        vocab: for character-level tasks, the characters in token order (``vocab[i]`` is token
            ``i``), so samples can be decoded; ``None`` for image tasks.
        test_x, test_y: the held-out test split, never seen by gates or controllers; ``None``
            for a task without one.
        provenance: where the data came from, as JSON-able data (for example a file list and
            its hash), written to the run's ``config.json``; ``None`` when there is nothing to
            record beyond the task's name.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    vocab: str | None = None
    test_x: torch.Tensor | None = None
    test_y: torch.Tensor | None = None
    provenance: dict | None = None

    def __post_init__(self) -> None:
        if (self.test_x is None) != (self.test_y is None):
            raise ValueError("TaskData: give both test_x and test_y, or neither")
        splits = ("train", "val") if self.test_x is None else ("train", "val", "test")
        for split in splits:
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"TaskData: {split}_x has {x.shape[0]} rows but {split}_y has {y.shape[0]}"
                )
            if x.shape[0] == 0:
                raise ValueError(f"TaskData: the {split} split is empty")
        if self.num_classes < 1:
            raise ValueError(f"TaskData: num_classes must be >= 1, got {self.num_classes}")


@dataclass(frozen=True)
class LoaderData:
    """The user's own batches, for :class:`~esper.tolaria.trainer.Trainer`: each split is a
    ``torch.utils.data.DataLoader`` or any iterable that yields ``(inputs, targets)`` pairs
    afresh every time it is iterated (a list of batches will do; a one-shot generator will
    not). The training split is visited once per epoch in the loader's own order; a sampler
    with ``set_epoch`` (``DistributedSampler``) is told the epoch first.

    A killed run resumes exactly when the loader's order comes from torch's global generator
    (a ``DataLoader(shuffle=True)`` without a ``generator=``; the trainer saves that one) or
    from ``set_epoch``. A ``generator=`` of your own is yours to save.

    Attributes:
        train: training batches.
        val: validation batches (gates, counterfactuals and controllers read these).
        test: held-out batches for the final report only, or None.

    Raises:
        TypeError: a split is not iterable, or is a one-shot iterator.
    """

    train: Iterable
    val: Iterable
    test: Iterable | None = None

    def __post_init__(self) -> None:
        for split in ("train", "val", "test"):
            loader = getattr(self, split)
            if loader is None and split == "test":
                continue
            if not isinstance(loader, Iterable):
                raise TypeError(
                    f"LoaderData: {split} must be a DataLoader or an iterable of (inputs, "
                    f"targets) batches, got {type(loader).__name__}"
                )
            if isinstance(loader, Iterator):
                raise TypeError(
                    f"LoaderData: {split} is a one-shot iterator ({type(loader).__name__}); "
                    "give something that can be iterated every epoch (a DataLoader, a list)"
                )


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None,
    shuffle: bool = True,
    drop_last: bool = False,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x_batch, y_batch)`` pairs covering every row once, by index slicing.

    Args:
        x: inputs, first dimension is the sample.
        y: targets, same first dimension as ``x``.
        batch_size: rows per batch; the last batch may be smaller unless ``drop_last``.
        generator: random generator that fixes the shuffle order; the same generator state
            gives the same order. May be ``None`` only when ``shuffle`` is false.
        shuffle: visit rows in a random permutation (training) or in order (evaluation).
        drop_last: skip a final short batch (useful when a batch of one would break batch norm).
        limit: visit only the first ``limit`` rows of the (shuffled) order: an "epoch" that is a
            fresh random sample of a large pool, as language-model training wants.
        shard: ``(rank, world_size)``: visit only every ``world_size``-th row of the order,
            starting at ``rank`` (one process's share under torch.distributed; the order, and
            so the split, is the same on every rank given the same generator). With
            ``shuffle`` the rows are first cut to a multiple of ``world_size``, so every rank
            takes as many steps.

    Returns:
        An iterator of batches; with ``shuffle=False`` they are views of ``x`` and ``y``.

    Raises:
        ValueError: mismatched row counts, ``batch_size < 1``, or ``shuffle`` without a
            generator.
    """
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"iterate_batches: x has {n} rows but y has {y.shape[0]}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"iterate_batches: batch_size must be an integer >= 1, got {batch_size!r}")
    if shuffle and generator is None:
        raise ValueError("iterate_batches: shuffle=True needs a torch.Generator for a fixed order")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"iterate_batches: limit must be >= 1, got {limit}")
        n = min(n, limit)
    if shard is not None:
        rank, world = shard
        if not 0 <= rank < world:
            raise ValueError(f"iterate_batches: shard {shard} is not (rank, world_size)")
    if not shuffle and shard is None:
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
        return
    if shuffle:
        # The permutation is drawn on the generator's own device and then moved, so the order
        # depends only on the generator, not on where the data lives.
        perm = torch.randperm(x.shape[0], generator=generator, device=generator.device)[:n]
    else:
        perm = torch.arange(n)
    if shard is not None:
        if shuffle:
            perm = perm[: n - n % world]
        perm = perm[rank::world]
        n = perm.shape[0]
    stop = n - n % batch_size if drop_last else n
    perm = perm.to(x.device)
    for start in range(0, stop, batch_size):
        idx = perm[start : start + batch_size]
        yield x.index_select(0, idx), y.index_select(0, idx.to(y.device))


def _as_path(data_dir: Path | str | None) -> Path | None:
    return None if data_dir is None else Path(data_dir).expanduser()


# --------------------------------------------------------------------------- digits


def load_digits_data(data_dir: Path | str | None, seed: int) -> TaskData:
    """The 8x8 handwritten digits bundled with scikit-learn, stratified by class: a fixed 20%
    test split (the same for every seed, so test numbers compare across seeds), then 80/20
    train/validation of the rest.

    Args:
        data_dir: ignored (the data ships with scikit-learn).
        seed: fixes the train/validation split and the order of the training rows.

    Returns:
        ``TaskData`` with ``x`` float32 ``(N, 1, 8, 8)`` standardised with the train mean and
        std (one channel, so one scalar each), ``y`` int64 labels 0..9; 1,151 / 287 / 359
        train / validation / test rows.
    """
    images, labels = _digits_arrays()
    x = torch.from_numpy(images / np.float32(16.0)).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    y = torch.from_numpy(labels.copy())
    pool_idx, test_idx = stratified_split(y, val_fraction=0.2, seed=DIGITS_TEST_SPLIT_SEED)
    train_idx, val_idx = stratified_split(y[pool_idx], val_fraction=0.2, seed=seed)
    train_idx, val_idx = pool_idx[train_idx], pool_idx[val_idx]
    return standardized_images(x, y, train_idx, val_idx, x[test_idx], y[test_idx])


def standardized_images(
    x: torch.Tensor,
    y: torch.Tensor,
    train_idx: torch.Tensor,
    val_idx: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int = 10,
) -> TaskData:
    """Training and validation rows of ``(x, y)`` plus a test split, all standardised with the
    training rows' mean and std (one scalar each: the images have one channel), so no statistic
    of validation or test images leaks into the inputs."""
    train_x = x[train_idx]
    mean, std = train_x.mean(), train_x.std()
    return TaskData(
        train_x=(train_x - mean) / std,
        train_y=y[train_idx],
        val_x=(x[val_idx] - mean) / std,
        val_y=y[val_idx],
        num_classes=num_classes,
        test_x=(test_x - mean) / std,
        test_y=test_y,
    )


#: The digits test split is drawn once, with this seed, whatever the run's seed.
DIGITS_TEST_SPLIT_SEED = 12345


def _digits_csv() -> Path | None:
    """scikit-learn's bundled ``digits.csv.gz``, found without importing sklearn (which takes
    about a second, a sixth of a whole digits run); None where the file is not laid out so."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Raw digits (float32 0..16 images, int64 labels), cached: parsing the CSV takes a while."""
    path = _digits_csv()
    if path is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images.astype(np.float32), bunch.target.astype(np.int64)
    # The same parse as sklearn's load_digits: 64 pixel columns, then the label.
    with gzip.open(path, mode="rt", encoding="utf-8") as handle:
        table = np.loadtxt(handle, delimiter=",")
    images = table[:, :-1].reshape(-1, 8, 8).astype(np.float32)
    return images, table[:, -1].astype(np.int64)


def stratified_split(
    y: torch.Tensor, val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class random split so every class keeps its share in both splits.

    Returns:
        ``(train_idx, val_idx)``: the training rows in a random order, the validation rows sorted.
    """
    gen = torch.Generator().manual_seed(seed)
    train_parts, val_parts = [], []
    for cls in torch.unique(y).tolist():
        members = torch.nonzero(y == cls).flatten()
        members = members[torch.randperm(members.numel(), generator=gen)]
        n_val = round(members.numel() * val_fraction)
        val_parts.append(members[:n_val])
        train_parts.append(members[n_val:])
    train_idx, val_idx = torch.cat(train_parts), torch.cat(val_parts)
    # Mix the classes (the split above is grouped by class) so unshuffled reads are not sorted.
    train_idx = train_idx[torch.randperm(train_idx.numel(), generator=gen)]
    val_idx = val_idx.sort().values  # validation order is irrelevant; keep it canonical
    return train_idx, val_idx


# --------------------------------------------------------------------------- character LM


def char_lm_data(
    text: str,
    block_size: int,
    seed: int,
    n_train_windows: int = 4096,
    max_val_windows: int = 512,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
) -> TaskData:
    """Turn a text into a character-level next-token task.

    The vocabulary is every distinct character of ``text``, sorted. The first
    ``1 - val_fraction - test_fraction`` of the text is for training, then validation, then
    test (contiguous, so no evaluation window overlaps a training window). Training windows
    start at random offsets drawn from ``seed``; validation windows do not overlap (stride
    ``block_size``) and, when there are more than ``max_val_windows``, an evenly spread subset
    is kept. Validation does not depend on ``seed``, so losses are comparable across seeds.

    Args:
        text: the corpus.
        block_size: tokens per window ``T``.
        seed: fixes the training window offsets.
        n_train_windows: training windows to draw.
        max_val_windows: cap on validation windows.
        val_fraction: share of the text, after the training part, used for validation.
        test_fraction: share at the very end held out as a test split (0: none); its windows
            are laid out like validation's.

    Returns:
        ``TaskData`` with int64 ``x`` and ``y`` of shape ``(N, T)`` where ``y`` is the same
        window shifted one character on (``y[:, :-1] == x[:, 1:]``); ``num_classes`` is the
        vocabulary size and ``vocab`` the characters in token order.

    Raises:
        ValueError: bad sizes, or a text too short to give a window in each split.
    """
    _check_char_lm_sizes(block_size, n_train_windows, max_val_windows, val_fraction, test_fraction)
    vocab, tokens = _encode_chars(text)
    train_tokens, val_tokens, test_tokens = _split_tokens(
        tokens, len(text), block_size, val_fraction, test_fraction
    )

    gen = torch.Generator().manual_seed(seed)
    train_x, train_y = random_windows(train_tokens, block_size, n_train_windows, gen)
    val_x, val_y = spread_windows(val_tokens, block_size, max_val_windows)
    test_x = test_y = None
    if test_fraction:
        test_x, test_y = spread_windows(test_tokens, block_size, max_val_windows)
    return TaskData(
        train_x,
        train_y,
        val_x,
        val_y,
        num_classes=len(vocab),
        vocab=vocab,
        test_x=test_x,
        test_y=test_y,
    )


def _check_char_lm_sizes(
    block_size: int,
    n_train_windows: int,
    max_val_windows: int,
    val_fraction: float,
    test_fraction: float,
) -> None:
    """Refuse sizes and fractions :func:`char_lm_data` cannot work with."""
    if block_size < 1 or n_train_windows < 1 or max_val_windows < 1:
        raise ValueError(
            "char_lm_data: block_size, n_train_windows and max_val_windows must be >= 1, got "
            f"{block_size}, {n_train_windows}, {max_val_windows}"
        )
    if not 0.0 < val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0 - val_fraction:
        raise ValueError(
            "char_lm_data: need 0 < val_fraction < 1 and 0 <= test_fraction < 1 - val_fraction, "
            f"got {val_fraction} and {test_fraction}"
        )


def _encode_chars(text: str) -> tuple[str, torch.Tensor]:
    """The vocabulary (every distinct character, sorted) and ``text`` as int64 token ids."""
    vocab = "".join(sorted(set(text)))
    lookup = {ch: i for i, ch in enumerate(vocab)}
    # np.frombuffer over UTF-32 code points, then a table lookup: far faster than a Python loop
    # over millions of characters.
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.zeros(max(ord(c) for c in vocab) + 1 if vocab else 1, dtype=np.int64)
    for ch, i in lookup.items():
        table[ord(ch)] = i
    return vocab, torch.from_numpy(table[codes])  # (len(text),)


def _split_tokens(
    tokens: torch.Tensor,
    text_length: int,
    block_size: int,
    val_fraction: float,
    test_fraction: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Contiguous train, validation and test parts of ``tokens``, each long enough for a
    window plus its next-token target (the test part only when ``test_fraction`` is set)."""
    n_train = int(len(tokens) * (1.0 - val_fraction - test_fraction))
    n_test = int(len(tokens) * test_fraction)
    train_tokens = tokens[:n_train]
    val_tokens = tokens[n_train : len(tokens) - n_test]
    test_tokens = tokens[len(tokens) - n_test :]
    need = block_size + 1  # a window plus its next-token target
    if (
        len(train_tokens) < need
        or len(val_tokens) < need
        or (test_fraction and len(test_tokens) < need)
    ):
        raise ValueError(
            f"char_lm_data: text of {text_length} characters is too short for block_size "
            f"{block_size}: each split needs at least {need} characters"
        )
    return train_tokens, val_tokens, test_tokens


def random_windows(
    tokens: torch.Tensor, block_size: int, count: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` windows at random offsets of ``tokens``, as next-token ``(x, y)`` pairs.

    Returns:
        int64 ``x`` and ``y`` of shape ``(count, block_size)``, ``y`` shifted one token on.
    """
    need = block_size + 1  # a window plus its next-token target
    offsets = torch.randint(0, len(tokens) - need + 1, (count,), generator=generator)
    chunks = tokens[offsets[:, None] + torch.arange(need)]  # (N, T+1)
    return chunks[:, :-1].contiguous(), chunks[:, 1:].contiguous()


def spread_windows(
    tokens: torch.Tensor, block_size: int, cap: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of ``tokens`` (stride ``block_size``); when there are more than
    ``cap``, an evenly spread subset of ``cap``. Deterministic: evaluation splits use them.

    Returns:
        int64 ``x`` and ``y`` of shape ``(N, block_size)``, ``y`` shifted one token on.
    """
    n = (len(tokens) - 1) // block_size  # non-overlapping windows that have a target
    starts = torch.arange(n) * block_size
    if n > cap:
        starts = starts[torch.linspace(0, n - 1, cap).round().long()]
    chunks = tokens[starts[:, None] + torch.arange(block_size + 1)]  # (N, T+1)
    return chunks[:, :-1].contiguous(), chunks[:, 1:].contiguous()


@lru_cache(maxsize=1)
def _pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "".join(topics[key] for key in sorted(topics))  # sorted: a stable order


def load_pyref_data(data_dir: Path | str | None, seed: int) -> TaskData:
    """Character-level LM on the Python reference docs bundled with CPython (``pydoc_data``).

    Args:
        data_dir: ignored (the text ships with Python).
        seed: fixes the training window offsets.

    Returns:
        ``TaskData`` of 64-character windows: 32768 training windows, at most 512 validation.
    """
    # A large pool of random windows (about 5x the training text); each epoch samples from it.
    return char_lm_data(
        _pydoc_text(), block_size=64, seed=seed, n_train_windows=32768, test_fraction=0.1
    )


TINYSTORIES_FILES = ("TinyStories-train.txt", "TinyStories-valid.txt")
TINYSTORIES_MAX_CHARS = 5_000_000  # the train file is ~1.9 GB; 5M characters is plenty here


def load_tinystories_data(data_dir: Path | str | None, seed: int) -> TaskData:
    """Character-level LM on the first ~5 MB of a local TinyStories text file.

    Args:
        data_dir: the text file itself, or a folder holding ``TinyStories-train.txt`` (preferred)
            or ``TinyStories-valid.txt``.
        seed: fixes the training window offsets.

    Returns:
        ``TaskData`` of 128-character windows: 8192 training windows, at most 512 validation.

    Raises:
        DataNotFoundError: no such file, naming the expected files and where to get them.
    """
    path = _as_path(data_dir)
    candidates: list[Path] = []
    if path is not None:
        candidates = [path] if path.is_file() else [path / name for name in TINYSTORIES_FILES]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        where = "no data_dir given" if path is None else f"searched {path}"
        raise DataNotFoundError(
            f"tinystories: expected {' or '.join(TINYSTORIES_FILES)} ({where}); download it "
            "from HuggingFace (https://huggingface.co/datasets/roneneldan/TinyStories) and pass "
            "the file or its folder as the data directory"
        )
    with found.open(encoding="utf-8", errors="replace") as f:
        text = f.read(TINYSTORIES_MAX_CHARS)
    return char_lm_data(text, block_size=128, seed=seed, n_train_windows=8192)


# --------------------------------------------------------------------------- CIFAR-10

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
#: Training images held out for validation.
CIFAR10_VAL_IMAGES = 5000


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only, so a tampered file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles; harmless
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickle batch -> ``(uint8 (N, 3, 32, 32), int64 (N,))``."""
    batch = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    return data, labels


def _find_cifar_folder(path: Path | None) -> Path:
    if path is not None:
        for folder in (path, path / CIFAR10_FOLDER):
            if (folder / "test_batch").is_file() and any(folder.glob("data_batch_*")):
                return folder
    where = "no data_dir given" if path is None else f"searched {path}"
    raise DataNotFoundError(
        f"cifar10: expected the folder {CIFAR10_FOLDER} ({where}); download the "
        f'"CIFAR-10 python version" from {CIFAR10_URL} and extract it there'
    )


def load_cifar10_data(data_dir: Path | str | None, seed: int) -> TaskData:
    """CIFAR-10 from the local python pickle batches: 5,000 training images (stratified by class)
    are the validation split, ``test_batch`` is the test split.

    Args:
        data_dir: the ``cifar-10-batches-py`` folder, or its parent.
        seed: fixes which training images are held out for validation.

    Returns:
        ``TaskData`` with float32 ``x`` ``(N, 3, 32, 32)`` scaled to [0, 1] and normalised per
        channel with the train mean and std, int64 ``y``. Full CIFAR-10 takes ~740 MB.

    Raises:
        DataNotFoundError: the folder is missing, naming it and where to get it.
    """
    folder = _find_cifar_folder(_as_path(data_dir))
    batch_files = sorted(
        folder.glob("data_batch_*"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0)
    )
    if len(batch_files) < 5:
        warnings.warn(
            f"cifar10: found {len(batch_files)} of 5 training batches in {folder}; "
            "the download may be incomplete",
            stacklevel=2,
        )
    parts = [_read_cifar_batch(p) for p in batch_files]
    pool_x = _to_unit_float(np.concatenate([x for x, _ in parts]))
    pool_y = torch.from_numpy(np.concatenate([y for _, y in parts]))
    test_np, test_labels = _read_cifar_batch(folder / "test_batch")
    test_x, test_y = _to_unit_float(test_np), torch.from_numpy(test_labels)
    for split, y in (("train", pool_y), ("test", test_y)):
        if int(y.min()) < 0 or int(y.max()) > 9:
            raise ValueError(f"cifar10: {split} labels must be in 0..9 ({folder})")
    # Gates and controllers see validation only, never the test batch.
    val_fraction = min(0.5, CIFAR10_VAL_IMAGES / len(pool_y))
    train_idx, val_idx = stratified_split(pool_y, val_fraction=val_fraction, seed=seed)
    train_x, val_x = pool_x[train_idx], pool_x[val_idx]
    del pool_x  # the training pool alone is ~600 MB
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)  # (1, 3, 1, 1)
    std = train_x.std(dim=(0, 2, 3), keepdim=True)
    for x in (train_x, val_x, test_x):
        x.sub_(mean).div_(std)  # in place, to keep one copy of each split
    return TaskData(
        train_x,
        pool_y[train_idx],
        val_x,
        pool_y[val_idx],
        num_classes=10,
        test_x=test_x,
        test_y=test_y,
    )


def _to_unit_float(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float()
    return x.div_(255.0)


__all__ = [
    "DataNotFoundError",
    "TaskData",
    "char_lm_data",
    "iterate_batches",
    "load_cifar10_data",
    "load_digits_data",
    "load_pyref_data",
    "load_tinystories_data",
    "random_windows",
    "spread_windows",
    "standardized_images",
    "stratified_split",
]
