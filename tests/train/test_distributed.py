"""Two real CPU processes (gloo, started by `accelerate launch`) with batch B train exactly like one process
with batch 2B: same loss at every step within 1e-5 (float summation order is the only difference)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from biomedgpt.train.config import build_config, merge
from biomedgpt.train.loop import train
from biomedgpt.train.stages import STAGE_DEFAULTS

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_two_processes_match_one_process_with_twice_the_batch(tmp_path, train_files):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher must be installed beside python"
    settings = {"model": "tiny", "threads": 1, "progress": False, "data": {"train": [str(train_files["qa"])],
                "max_length": 400}, "schedule": {"batch_size": 3, "max_steps": 4, "save_every": 2},
                "optim": {"lr": 1e-2}}
    config_path = tmp_path / "align.yaml"
    config_path.write_text(yaml.safe_dump({**settings, "output_dir": str(tmp_path / "two")}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # `--multi_gpu` selects accelerate's torchrun launcher; on a machine without CUDA the processes join one gloo
    # group (accelerate's `--cpu` flag alone would start a single process unless MPI is installed).
    launched = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
         "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
         "-m", "biomedgpt", "train", "align", "--config", str(config_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"] == 2
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints" / "step-00000004").glob("rng-*")) == [
        "rng-0.pt", "rng-1.pt"]

    single = build_config(merge(STAGE_DEFAULTS["align"], merge(settings, {
        "stage": "align", "output_dir": str(tmp_path / "one"), "schedule": {"batch_size": 6}})))
    train(single)
    two, one = _losses(tmp_path / "two"), _losses(tmp_path / "one")
    assert len(two) == len(one) == 4
    assert two == pytest.approx(one, abs=TOLERANCE)
