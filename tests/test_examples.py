"""The examples in examples/ run, at a tiny size, as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import esper

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_resnet_example_grows_a_user_cnn_on_fashion_files(tiny_fashion):
    folder, _ = tiny_fashion
    out = _run(
        "grow_resnet_fashion.py", "--epochs", "2", "--samples", "64", "--data-dir", str(folder)
    )
    assert "epoch   2" in out and "test accuracy" in out
    assert {"layer1", "layer2", "layer3"} <= set(out.split())  # the slots, named after targets


def test_the_gpt_example_grows_a_user_transformer_on_python_source():
    corpus = Path(esper.__file__).parent  # Esper's own source: enough files for three splits
    out = _run("grow_gpt_pystd.py", "--epochs", "2", "--samples", "32", "--data-dir", str(corpus))
    assert "epoch   2" in out and "test loss" in out
    assert {"blocks.0", "blocks.1"} <= set(out.split())


def test_each_example_is_under_60_lines_of_user_code():
    import ast

    for path in sorted((ROOT / "examples").glob("*.py")):
        source = path.read_text()
        after_docstring = source.splitlines()[ast.parse(source).body[0].end_lineno :]
        code = [
            line for line in after_docstring if line.strip() and not line.strip().startswith("#")
        ]
        assert len(code) < 60, (path.name, len(code))
