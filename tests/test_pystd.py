"""The pystd task: library files only, a split by file that no seed changes, byte windows that
never cross splits, and the corpus recorded (file list and hash) in the run's config.json."""

from __future__ import annotations

import json

import torch

from esper.cli import main
from esper.tolaria import pystd
from esper.tolaria.tasks import get_task


def _tree(root, n_files=60):
    """A fake library: modules, a package, plus tests and site-packages that must be skipped."""
    for i in range(n_files):
        folder = root / ("pkg" if i % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"mod{i}.py").write_text(f"def f{i}(x):\n    return x * {i}  # {'#' * 40}\n" * 4)
    for skipped in ("test/test_a.py", "tests/b.py", "pkg/test_c.py", "site-packages/d/e.py"):
        (root / skipped).parent.mkdir(parents=True, exist_ok=True)
        (root / skipped).write_text("SKIPPED = True\n" * 50)
    return root


def test_library_sources_skip_tests_and_site_packages(tmp_path):
    files = pystd.library_sources(_tree(tmp_path))
    assert len(files) == 60 and files == sorted(files)
    assert not any("test" in f or "site-packages" in f for f in files)


def test_split_is_by_file_and_the_same_for_every_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(pystd, "PYSTD_TRAIN_WINDOWS", 256)
    root = _tree(tmp_path)
    a, b = pystd.load_pystd_data(root, seed=0), pystd.load_pystd_data(root, seed=1)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.test_x, b.test_x)
    assert not torch.equal(a.train_x, b.train_x)  # the seed draws other training windows
    assert a.num_classes == 256 and a.train_x.dtype == torch.int64
    assert torch.equal(a.train_x[:, 1:], a.train_y[:, :-1])
    # No window crosses into another split: each is a run of bytes of its own split's files.
    files = a.provenance["files"]
    blobs = {
        split: b"".join((root / f).read_bytes() for f in files if pystd.split_of(f) == split)
        for split in ("train", "val", "test")
    }
    assert a.provenance["bytes"] == {split: len(blob) for split, blob in blobs.items()}
    for split, x in (("val", a.val_x), ("test", a.test_x), ("train", a.train_x[:20])):
        for row in x:
            assert bytes(row.tolist()) in blobs[split], split


def test_provenance_hash_changes_with_any_file(tmp_path, monkeypatch):
    monkeypatch.setattr(pystd, "PYSTD_TRAIN_WINDOWS", 16)
    root = _tree(tmp_path)
    before = pystd.load_pystd_data(root, seed=0).provenance["sha256"]
    assert pystd.load_pystd_data(root, seed=0).provenance["sha256"] == before
    (root / "mod1.py").write_text("changed = 1\n" * 40)
    assert pystd.load_pystd_data(root, seed=0).provenance["sha256"] != before


def test_a_run_records_the_corpus_and_reports_the_test_split(tmp_path, monkeypatch):
    monkeypatch.setattr(pystd, "PYSTD_TRAIN_WINDOWS", 512)
    root, run_dir = _tree(tmp_path / "lib"), tmp_path / "run"
    argv = ["train", "static", "--task", "pystd", "--data-dir", str(root), "--epochs", "1"]
    assert main([*argv, "--run-dir", str(run_dir)]) == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["files"] == pystd.library_sources(root)
    assert len(config["data"]["sha256"]) == 64
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test_loss"] > 0


def test_a_folder_without_sources_is_one_line(tmp_path, capsys):
    assert main(["train", "static", "--task", "pystd", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no Python source files" in err and str(tmp_path) in err


def test_the_running_pythons_library_is_the_default():
    spec = get_task("pystd")
    assert spec.topology == "transformer" and spec.epoch_samples == 2048
    files = pystd.library_sources(pystd.stdlib_root())
    assert len(files) > 300 and "os.py" in files
    assert {pystd.split_of(f) for f in files} == {"train", "val", "test"}
