"""The fashion task: IDX files read exactly, a validation split carved from training, the
official test set as the test split, and a missing package said in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import idx_bytes
from esper.cli import main
from esper.tolaria.data import TaskData
from esper.tolaria.fashion import FASHION_DIR, read_idx
from esper.tolaria.tasks import get_task


def test_read_idx_round_trips_and_refuses_a_short_file(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    assert np.array_equal(read_idx(tmp_path / "a"), array)
    (tmp_path / "b").write_bytes(idx_bytes(array)[:-1])
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "b")
    (tmp_path / "c").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)  # float IDX
    with pytest.raises(ValueError, match="unsigned bytes"):
        read_idx(tmp_path / "c")


def test_splits_are_carved_from_training_and_the_test_set_is_kept(tiny_fashion, monkeypatch):
    folder, arrays = tiny_fashion
    from esper.tolaria import fashion

    monkeypatch.setattr(fashion, "FASHION_VAL_IMAGES", 20)
    data = get_task("fashion").load(folder, seed=0)
    assert data.train_x.shape == (180, 1, 28, 28) and data.val_x.shape == (20, 1, 28, 28)
    assert data.test_x.shape == (40, 1, 28, 28)
    assert torch.bincount(data.val_y).tolist() == [2] * 10  # stratified
    assert data.test_y.tolist() == arrays["test_labels"].tolist()
    assert abs(float(data.train_x.mean())) < 1e-5 and abs(float(data.train_x.std()) - 1) < 1e-4
    # The test images are the file's, standardised with the training statistics.
    raw = torch.from_numpy(arrays["test_images"].astype(np.float32) / 255.0)
    pool = torch.from_numpy(arrays["train_images"].astype(np.float32) / 255.0)
    train_rows = pool[~torch.isin(torch.arange(200), _val_rows(pool, data))]
    mean, std = train_rows.mean(), train_rows.std()
    assert torch.allclose(data.test_x[:, 0], (raw - mean) / std, atol=1e-5)
    other = get_task("fashion").load(folder, seed=1)
    assert not torch.equal(other.val_y, data.val_y) or not torch.equal(other.val_x, data.val_x)


def _val_rows(pool: torch.Tensor, data: TaskData) -> torch.Tensor:
    """Which rows of the raw pool became validation (matched by their standardised pixels)."""
    std_pool = (pool - pool.mean()) / pool.std()
    rows = []
    for img in data.val_x[:, 0]:
        diffs = (std_pool - img).abs().flatten(1).amax(dim=1)
        rows.append(int(diffs.argmin()))
    return torch.tensor(rows)


def test_missing_files_are_one_line_naming_the_package(tmp_path, capsys):
    argv = ["train", "static", "--task", "fashion", "--data-dir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "dataset-fashion-mnist" in err and str(tmp_path) in err


def test_a_run_reports_the_test_split(tiny_fashion, tmp_path):
    folder, _ = tiny_fashion
    run_dir = tmp_path / "run"
    argv = ["train", "static", "--task", "fashion", "--data-dir", str(folder)]
    assert main([*argv, "--epochs", "2", "--run-dir", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0.0 <= summary["test_accuracy"] <= 100.0 and summary["test_loss"] > 0


def test_taskdata_wants_both_test_tensors_or_neither():
    x, y = torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="both test_x and test_y"):
        TaskData(x, y, x, y, num_classes=2, test_x=x)
    with pytest.raises(ValueError, match="test_x has 4 rows but test_y has 3"):
        TaskData(x, y, x, y, num_classes=2, test_x=x, test_y=y[:3])


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is absent")
def test_the_real_files_load():
    data = get_task("fashion").load(None, seed=0)
    assert data.train_x.shape == (55000, 1, 28, 28) and data.val_x.shape[0] == 5000
    assert data.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.test_y).tolist() == [1000] * 10
    assert torch.bincount(data.val_y).tolist() == [500] * 10
