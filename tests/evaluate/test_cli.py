"""`biomedgpt eval` / `biomedgpt report` end to end: baselines, the tiny model, resumption, sampling, reports."""

from __future__ import annotations

import csv
import json

import pytest

from biomedgpt.cli import main
from biomedgpt.data.records import MCQRecord, QARecord, write_jsonl
from biomedgpt.evaluate import runner

MOLS = ["CC(=O)Oc1ccccc1C(=O)O", "CCO", "CCCO", "CCCCO", "c1ccccc1", "Cc1ccccc1", "CC(=O)O", "CCC(=O)O"]


@pytest.fixture()
def qa_files(tmp_path):
    train = [QARecord(id=f"t{i}", question="Describe this molecule.", answer=f"The molecule is number {i}.",
                      molecules=[s]) for i, s in enumerate(MOLS)]
    test = [QARecord(id=f"e{i}", question="Describe this molecule.", answer=f"The molecule is number {i}.",
                     molecules=[s + "C"]) for i, s in enumerate(MOLS)]
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "test.jsonl", test)
    return tmp_path


@pytest.fixture()
def mcq_file(tmp_path):
    records = [MCQRecord(id=f"m{i}", question=f"Question {i}?", options={"A": "yes", "B": "no", "C": "maybe"},
                         answer="ABCA"[i % 4], context="Some context.") for i in range(10)]
    write_jsonl(tmp_path / "mcq.jsonl", records)
    return tmp_path / "mcq.jsonl"


def _metrics(out):
    return json.loads((out / "metrics.json").read_text())


def test_eval_nn_baseline_writes_predictions_metrics_and_table(qa_files, capsys):
    out = qa_files / "run"
    code = main(["eval", "qa", "--model", "baseline:nn", "--data", str(qa_files / "test.jsonl"),
                 "--train", str(qa_files / "train.jsonl"), "--out", str(out), "--batch-size", "3"])
    assert code == 0
    assert "| baseline:nn (train: train) |" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"e{i}" for i in range(8)]
    result = _metrics(out)
    assert result["metrics"]["n"] == 8 and result["system"] == "baseline:nn (train: train)"
    assert 0 < result["metrics"]["bleu4"] <= 1
    # toluene is in both files ("c1ccccc1" + "C" == "Cc1ccccc1"): it leaves the pool
    assert result["details"] == {"pool_molecules": 7, "pool_proteins": 0, "pool_removed_overlap": 1}
    assert (out / "metrics.md").read_text().startswith("### test (qa, n=8")


def test_killed_run_resumes_where_it_stopped(qa_files):
    records = runner.load_records("qa", qa_files / "test.jsonl")
    spec = runner.RunSpec(task="qa", model="baseline:echo", data="test", data_sha256="x", benchmark="toy")
    calls = []

    def predictor(batch):
        calls.append([r.id for r in batch])
        return [{"prediction": r.answer.upper()} for r in batch]

    full = runner.evaluate(spec, records, predictor, qa_files / "full", details={})
    # simulate a kill: three complete lines and a torn fourth
    out = qa_files / "killed"
    runner.prepare_run_dir(out, spec, overwrite=False)
    lines = (qa_files / "full" / "predictions.jsonl").read_text().splitlines(keepends=True)
    (out / "predictions.jsonl").write_text("".join(lines[:3]) + lines[3][:10])
    calls.clear()
    resumed = runner.evaluate(spec, records, predictor, out)
    assert calls == [[f"e{i}" for i in range(3, 8)]]  # only the missing ones, one batch of 8
    assert (out / "predictions.jsonl").read_text() == "".join(lines)
    assert resumed["metrics"] == full["metrics"]
    # re-running the finished run predicts nothing and keeps the recorded time of the run that did the work
    metrics = out / "metrics.json"
    metrics.write_text(metrics.read_text().replace(f'"seconds_this_session": {resumed["seconds_this_session"]}',
                                                   '"seconds_this_session": 123.45'))
    calls.clear()
    again = runner.evaluate(spec, records, predictor, out)
    assert calls == [] and again["seconds_this_session"] == 123.45


def test_a_different_run_in_the_same_folder_is_refused(qa_files, capsys):
    out = qa_files / "run"
    args = ["eval", "qa", "--data", str(qa_files / "test.jsonl"), "--train", str(qa_files / "train.jsonl"),
            "--out", str(out)]
    assert main(args + ["--model", "baseline:majority"]) == 0
    assert main(args + ["--model", "baseline:majority", "--batch-size", "2"]) == 0  # batch size may change
    assert main(args + ["--model", "baseline:random"]) == 2
    assert "differs in: model" in capsys.readouterr().err
    assert main(args + ["--model", "baseline:random", "--overwrite"]) == 0


def test_limit_takes_a_fixed_seeded_sample(mcq_file, tmp_path):
    for name in ("a", "b"):
        assert main(["eval", "mcq", "--model", "baseline:random", "--data", str(mcq_file), "--limit", "4",
                     "--seed", "7", "--out", str(tmp_path / name)]) == 0
    ids = [[json.loads(x)["id"] for x in (tmp_path / n / "predictions.jsonl").read_text().splitlines()]
           for n in ("a", "b")]
    assert ids[0] == ids[1] and len(ids[0]) == 4
    assert _metrics(tmp_path / "a")["metrics"] == _metrics(tmp_path / "b")["metrics"]


def test_bad_inputs_exit_2_with_a_clear_message(tmp_path, qa_files, capsys):
    assert main(["eval", "qa", "--model", "baseline:nn", "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "data file not found" in capsys.readouterr().err
    (tmp_path / "broken.jsonl").write_text('{"id": "1", "question": "q"}\n')
    assert main(["eval", "qa", "--model", "baseline:nn", "--data", str(tmp_path / "broken.jsonl")]) == 2
    assert "broken.jsonl:1: missing field 'answer'" in capsys.readouterr().err
    assert main(["eval", "qa", "--model", "baseline:nn", "--data", str(qa_files / "test.jsonl"),
                 "--out", str(tmp_path / "run")]) == 2
    assert "--train" in capsys.readouterr().err


def test_tiny_model_mcq_both_protocols_and_qa(tiny_model_dir, mcq_file, qa_files, tmp_path):
    train = [MCQRecord(id=f"t{i}", question=f"Training question {i}?", options={"A": "yes", "B": "no"}, answer="A")
             for i in range(3)]
    write_jsonl(tmp_path / "mcq_train.jsonl", train)
    for protocol in ("logprob", "generate"):
        out = tmp_path / protocol
        assert main(["eval", "mcq", "--model", str(tiny_model_dir), "--data", str(mcq_file), "--protocol", protocol,
                     "--shots", "1", "--train", str(tmp_path / "mcq_train.jsonl"), "--limit", "4", "--batch-size", "2",
                     "--max-new-tokens", "3", "--out", str(out)]) == 0
        result = _metrics(out)
        assert result["protocol"] == protocol and result["metrics"]["n"] == 4
        assert result["system"].endswith(f"({protocol}, 1-shot)")
    bad = QARecord(id="bad", question="Describe this molecule.", answer="x", molecules=["C1CC"])
    protein = QARecord(id="prot", question="Where is it?", answer="nucleus", proteins=["MKTAYIAKQRQISFVK"])
    records = list(runner.load_records("qa", qa_files / "test.jsonl"))[:2] + [bad, protein]
    write_jsonl(tmp_path / "qa.jsonl", records)
    out = tmp_path / "qa"
    assert main(["eval", "qa", "--model", str(tiny_model_dir), "--data", str(tmp_path / "qa.jsonl"),
                 "--max-new-tokens", "4", "--batch-size", "4", "--out", str(out)]) == 0
    rows = {json.loads(x)["id"]: json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()}
    assert "C1CC" in rows["bad"]["error"] and rows["bad"]["prediction"] == ""
    assert "error" not in rows["prot"] and "error" not in rows["e0"]
    assert _metrics(out)["metrics"]["errors"] == 1 and _metrics(out)["protocol"] == "generate"


def test_report_merges_runs_with_anchors_and_draws_a_png(qa_files, mcq_file, tmp_path, capsys):
    runs = []
    for model in ("baseline:nn", "baseline:majority"):
        out = tmp_path / model.split(":")[1]
        main(["eval", "qa", "--model", model, "--data", str(qa_files / "test.jsonl"), "--benchmark", "chebi20-test",
              "--train", str(qa_files / "train.jsonl"), "--out", str(out)])
        runs.append(str(out))
    main(["eval", "mcq", "--model", "baseline:majority", "--data", str(mcq_file), "--benchmark", "pubmedqa-test",
          "--out", str(tmp_path / "pq")])
    capsys.readouterr()
    assert main(["report", *runs, str(tmp_path / "pq"), "--out", str(tmp_path / "r.md"),
                 "--plot", str(tmp_path / "r.png")]) == 0
    text = (tmp_path / "r.md").read_text()
    assert "### chebi20-test (qa, n=8)" in text and "| baseline:nn (train: train) |" in text
    assert "| baseline:majority (train: train) |" in text
    assert "| MolT5-small (published; ChEBI-20 train) | published | 0.519 | 0.436 |" in text
    assert "| BioMedGPT-LM-7B fine-tuned (published) | published | 0.761 |" in text
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["report", str(tmp_path / "nothing")]) == 2


@pytest.mark.shared_data
def test_chebi20_slice_nn_from_shared_data(shared_data, tmp_path):
    """A small conversion of the real ChEBI-20 files: 40 test molecules against 400 validation molecules."""
    def convert(name, count):
        with open(shared_data / "chebi-20" / name, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[:count]
        return [QARecord(id=r["CID"], question="Describe this molecule.", answer=r["description"],
                         molecules=[r["SMILES"].replace("\\\\", "\\")]) for r in rows]

    write_jsonl(tmp_path / "val.jsonl", convert("validation.txt", 400))
    write_jsonl(tmp_path / "test.jsonl", convert("test.txt", 40))
    out = tmp_path / "run"
    assert main(["eval", "qa", "--model", "baseline:nn", "--data", str(tmp_path / "test.jsonl"),
                 "--train", str(tmp_path / "val.jsonl"), "--out", str(out)]) == 0
    metrics = _metrics(out)["metrics"]
    assert metrics["errors"] == 0 and 0.15 < metrics["bleu4"] < 0.6 and 0.25 < metrics["meteor"] < 0.7


def test_run_names_keep_two_runs_of_one_benchmark_apart():
    from biomedgpt.evaluate.runner import RunSpec

    spec = dict(task="qa", data="t.jsonl", data_sha256="0", benchmark="b")
    assert RunSpec(model="/m/small", **spec).system == "small"
    assert RunSpec(model="/m/small", generation={"quantize": "int8", "num_beams": 4}, **spec).system == \
        "small (int8, 4 beams)"
    assert RunSpec(model="/m/small", generation={"quantize": "none"}, **spec).system == "small"
    assert RunSpec(model="baseline:nn", train="/d/pool_a.jsonl", **spec).system == "baseline:nn (train: pool_a)"
    assert RunSpec(model="baseline:nn", train="/d/pool_b.jsonl", **spec).system == "baseline:nn (train: pool_b)"


def test_eval_evidence_override_is_the_retrieval_ablation(tiny_model_dir, qa_files, tmp_path, monkeypatch):
    """`--evidence K` sets the model's evidence_in_prompt for the run (the tiny model has none of its own, so it
    gets the repository's index), is recorded in run.json and named in the report row."""
    from biomedgpt import retrieval

    calls = []
    real = retrieval.find_evidence
    monkeypatch.setattr(retrieval, "find_evidence", lambda *a, **kw: calls.append(a[2]) or real(*a, **kw))
    common = ["eval", "qa", "--model", str(tiny_model_dir), "--data", str(qa_files / "test.jsonl"), "--limit", "2",
              "--max-new-tokens", "2"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert calls == [] and _metrics(tmp_path / "plain")["system"] == tiny_model_dir.name
    assert main([*common, "--evidence", "1", "--out", str(tmp_path / "with")]) == 0
    assert calls == [1, 1]
    assert json.loads((tmp_path / "with" / "run.json").read_text())["evidence"] == 1
    assert _metrics(tmp_path / "with")["system"] == f"{tiny_model_dir.name} (evidence 1)"
    assert main([*common, "--evidence", "-1", "--out", str(tmp_path / "bad")]) == 2
