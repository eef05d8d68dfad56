"""Config files are validated on load; every error names the key at fault."""

from __future__ import annotations

import pytest

from biomedgpt.train.config import ConfigError, dump_config, load_config, parse_override
from biomedgpt.train.stages import STAGE_DEFAULTS


def _load(tmp_path, text: str, stage: str = "align", overrides=(), suffix=".yaml"):
    path = tmp_path / f"config{suffix}"
    path.write_text(text)
    return load_config(path, stage, overrides, STAGE_DEFAULTS[stage])


def test_yaml_layers_stage_defaults_file_and_overrides(tmp_path):
    config = _load(tmp_path, "output_dir: runs/a\ndata: {train: qa.jsonl}\nschedule: {max_steps: 10}\n"
                             "optim: {lr: 3e-4}\n", overrides=["schedule.batch_size=2", "trainable.encoders=true"])
    assert config.optim.lr == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as a string: accepted as a number
    assert config.data.train == ["qa.jsonl"]  # a single file becomes a list
    assert config.schedule.batch_size == 2 and config.trainable.encoders is True
    assert config.trainable.adapters is True and config.trainable.lm == "frozen"  # align defaults
    assert "lr: 0.0003" in dump_config(config)


def test_toml_is_accepted(tmp_path):
    config = _load(tmp_path, 'output_dir = "r"\n[data]\ntrain = ["t.txt"]\n[schedule]\nepochs = 1.5\n',
                   stage="lm", suffix=".toml")
    assert config.stage == "lm" and config.schedule.epochs == 1.5 and config.trainable.lm == "full"


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("output_dir: r\ndata: {train: a}\nschedule: {max_steps: 1}\noptim: {lrr: 1}\n", (),
         "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"),
        ("output_dir: r\ndata: {train: a}\nschedule: {max_steps: many}\n", (),
         "'schedule.max_steps' must be an integer or null, got 'many'"),
        ("output_dir: r\ndata: {train: a}\nschedule: {max_steps: 1}\n", ("trainable.lm=half",),
         "'trainable.lm' must be one of 'frozen', 'full', 'lora'"),
        ("output_dir: r\nschedule: {max_steps: 1}\n", (), "'data.train' is required"),
        ("data: {train: a}\nschedule: {max_steps: 1}\n", (), "'output_dir' is required"),
        ("output_dir: r\ndata: {train: a}\n", (), "exactly one of 'schedule.max_steps' or 'schedule.epochs'"),
        ("output_dir: r\ndata: {train: a}\nschedule: {max_steps: 1, batch_size: 0}\n", (),
         "'schedule.batch_size' must be >= 1"),
        ("output_dir: r\ndata: {train: a}\nschedule: {max_steps: 1}\noptim: {lr: -1}\n", (), "'optim.lr' must be > 0"),
        ("output_dir: r\ndata: train\n", (), "'data' must be a table/mapping"),
        ("stage: lm\noutput_dir: r\n", (), "config key 'stage' is 'lm' but the command asks for stage 'align'"),
        ("output_dir: [unclosed\n", (), "invalid YAML"),
        ("- a\n- b\n", (), "the top level must be a mapping"),
        ("output_dir: r\ndata: {train: a}\nschedule: {max_steps: 1}\n", ("novalue",), "must look like key=value"),
    ],
)
def test_errors_name_the_key(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text, overrides=overrides)
    assert message in str(err.value)


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", "lm")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ConfigError, match="must end in .yaml, .yml or .toml"):
        load_config(tmp_path / "c.json", "lm")


def test_override_values_are_parsed_as_yaml():
    assert parse_override("data.train=[a.jsonl, b.jsonl]") == {"data": {"train": ["a.jsonl", "b.jsonl"]}}
    assert parse_override("progress=false") == {"progress": False}


def test_cli_reports_config_errors_as_one_line(tmp_path, capsys):
    from biomedgpt.cli import main

    path = tmp_path / "c.yaml"
    path.write_text("output_dir: r\ndata: {train: a}\nschedule: {max_steps: 1}\n")
    assert main(["train", "lm", "--config", str(path), "optim.betas=1", "--print-config"]) == 2
    assert "unknown config key 'optim.betas'" in capsys.readouterr().err
    assert main(["train", "lm", "--config", str(path), "optim.lr=0.5", "--print-config"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out
