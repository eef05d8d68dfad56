"""Robustness: a run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends; a NaN loss
stops the run with a clear message and keeps the last good checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from biomedgpt.train.checkpointing import latest_checkpoint
from biomedgpt.train.config import build_config, merge
from biomedgpt.train.loop import TrainingDiverged, train
from biomedgpt.train.stages import STAGE_DEFAULTS

REPO = Path(__file__).resolve().parents[2]
STEPS = 40


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _cli(config: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "biomedgpt", "train", "lm", "--config", str(config), *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, train_files):
    settings = {"model": "tiny", "threads": 1, "progress": False, "seed": 3,
                "data": {"train": [str(train_files["corpus"])], "max_length": 96},
                "schedule": {"batch_size": 8, "max_steps": STEPS, "save_every": 3}, "optim": {"lr": 3e-3}}
    killed_dir = tmp_path / "killed"
    config_path = tmp_path / "lm.yaml"
    config_path.write_text(yaml.safe_dump({**settings, "output_dir": str(killed_dir)}))

    child = _cli(config_path)
    deadline = time.monotonic() + 180  # a loaded machine can take long to import torch
    while time.monotonic() < deadline and child.poll() is None:
        metrics = killed_dir / "metrics.jsonl"
        if metrics.is_file() and metrics.read_text().count("\n") >= 8:
            break
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.communicate()
    assert child.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    checkpoint = latest_checkpoint(killed_dir)
    assert checkpoint is not None and not (killed_dir / "summary.json").exists()
    killed_at = json.loads((checkpoint / "state.json").read_text())["step"]
    assert 3 <= killed_at < STEPS

    resumed = _cli(config_path, "--resume")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    resumed_summary = json.loads(out.strip().splitlines()[-1])

    reference = build_config(merge(STAGE_DEFAULTS["lm"],
                                   {**settings, "stage": "lm", "output_dir": str(tmp_path / "straight")}))
    straight = train(reference)
    assert resumed_summary["steps"] == straight["steps"] == STEPS
    assert abs(resumed_summary["loss"] - straight["loss"]) <= 1e-6
    resumed_curve = [r["loss"] for r in _rows(killed_dir)]
    assert [r["step"] for r in _rows(killed_dir)] == list(range(1, STEPS + 1))  # no duplicated steps
    assert resumed_curve == pytest.approx([r["loss"] for r in _rows(tmp_path / "straight")], abs=1e-6)
    info = json.loads((killed_dir / "run.json").read_text())
    assert info["resumes"][0]["from"].endswith(checkpoint.name)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(make_config, train_files):
    from safetensors.torch import load_file

    config = make_config("lm", train_files["corpus"], data={"max_length": 48},
                         optim={"lr": 1e6, "max_grad_norm": 0.0, "scheduler": "constant"},
                         schedule={"batch_size": 4, "max_steps": 30, "save_every": 1})
    with pytest.raises(TrainingDiverged) as err:
        train(config)
    message = str(err.value)
    assert "training stopped at step" in message and "the last good checkpoint is" in message
    failed_step = int(message.split("step ")[1].split(":")[0])
    checkpoint = latest_checkpoint(Path(config.output_dir))
    assert checkpoint.name in message
    assert json.loads((checkpoint / "state.json").read_text())["step"] == failed_step - 1
    for tensor in load_file(checkpoint / "trainable.safetensors").values():
        assert bool(tensor.isfinite().all())


def test_resume_with_a_changed_config_names_the_keys(make_config, train_files, caplog):
    from biomedgpt.train.config import dump_config
    from biomedgpt.train.loop import _warn_config_changes

    config = make_config("lm", train_files["corpus"])
    run_dir = Path(config.output_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(config))
    _warn_config_changes(run_dir, make_config("lm", train_files["corpus"], threads=2))
    assert "changed config" not in caplog.text  # threads do not change the result
    _warn_config_changes(run_dir, make_config("lm", train_files["corpus"], optim={"lr": 0.5}))
    assert "optim.lr" in caplog.text and "-> 0.5" in caplog.text


def test_metrics_log_survives_a_line_cut_by_a_crash(tmp_path):
    from biomedgpt.train.loop import MetricsLog, parse_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    MetricsLog(path, enabled=True, keep_until_step=2).write({"step": 3, "loss": 1.0})
    assert [r["step"] for r in parse_metrics(path.read_text())] == [1, 2, 3]


def test_resume_finetune_lora_from_an_older_checkpoint(make_config, train_files):
    """Exact resume for LoRA + adapters + the encoder cache: roll `latest` back to step 3 of 6 and resume."""
    from biomedgpt.io import atomic_write_text

    config = make_config("finetune", train_files["qa"], schedule={"batch_size": 3, "max_steps": 6, "save_every": 3,
                                                                   "keep_checkpoints": 3}, optim={"lr": 1e-2})
    straight = train(config)
    run_dir = Path(config.output_dir)
    straight_curve = [r["loss"] for r in _rows(run_dir)]
    atomic_write_text(run_dir / "checkpoints" / "latest", "step-00000003\n")
    resumed = train(config, resume=True)
    assert abs(resumed["loss"] - straight["loss"]) <= 1e-6
    assert [r["loss"] for r in _rows(run_dir)] == pytest.approx(straight_curve, abs=1e-6)
