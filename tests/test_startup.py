"""`biomedgpt.startup`: the deferred parts of `import torch` for `ask` and `chat`. Each check runs in a new
process, since the hook must be installed before torch is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from biomedgpt.startup import DEFERRED

REPO_ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, *args: str, **env: str) -> str:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO_ROOT,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("user", ["torch._dynamo", "transformers"])
def test_deferred_modules_run_on_first_use_and_before_their_users(user):
    code = """
import json, sys
from biomedgpt import startup
installed = startup.defer_torch_extras()
import torch
deferred = sorted(startup.pending())
x = torch.randn(4, 4)
value = float(torch.nn.functional.silu(x @ x).sum())  # eager inference needs none of them
normal = torch.distributions.Normal(0.0, 1.0)  # first attribute access runs torch.distributions
after_use = sorted(startup.pending())
import importlib
importlib.import_module(sys.argv[1])  # uses (or builds models with) the meta kernels: everything runs first
print(json.dumps({"installed": installed, "deferred": deferred, "after_use": after_use,
                  "log_prob": float(normal.log_prob(torch.tensor(0.0))), "end": startup.pending(),
                  "export": callable(torch.export.export)}))
"""
    result = json.loads(_python(code, user))
    assert result["installed"] is True
    assert result["deferred"] == sorted(DEFERRED)
    assert result["after_use"] == sorted(set(DEFERRED) - {"torch.distributions"})
    assert abs(result["log_prob"] + 0.9189385) < 1e-5
    assert result["end"] == [] and result["export"] is True


def test_a_deferred_package_runs_before_its_submodules():
    """As without the hook: `import torch.utils.data.distributed` runs `torch/utils/data/__init__.py` first."""
    code = """
from biomedgpt import startup
startup.defer_torch_extras()
import torch
before = "torch.utils.data" in startup.pending()
import torch.utils.data.distributed
print(before, "torch.utils.data" in startup.pending(), torch.utils.data.DataLoader.__name__)
"""
    assert _python(code) == "True False DataLoader"


# A package that takes a while to run, counts its runs and fails when asked to: the deferral's semantics on a module
# whose behaviour the test controls (torch's own are checked above).
SLOW_PACKAGE = """
import os, time
import runs
runs.count += 1
time.sleep(0.3)
if os.environ.get("SLOW_FAIL") == "1":
    raise RuntimeError("boom")
VALUE = 42
"""
SCENARIOS = {
    # two threads use it at once: both wait for the one run and see the whole module
    "threads": """
import threading
got = []
threads = [threading.Thread(target=lambda: got.append(slow.VALUE)) for _ in range(2)]
[t.start() for t in threads]; [t.join() for t in threads]
print(got, runs.count)
""",
    # an attribute set before the first use survives it; dir() runs it first
    "setattr": """
slow.PATCH = 1
print(slow.PATCH, "VALUE" in dir(slow), runs.count)
""",
    # reloading a module that never ran runs it, then reloads it: twice, and nothing is left pending
    "reload": """
import importlib
importlib.reload(slow)
print(slow.VALUE, runs.count, startup.pending())
""",
    # a failing run: an ImportError on every use (hasattr does not hide it), and a new import tries again
    "failure": """
import os, sys
errors = []
for _ in range(2):
    try:
        hasattr(slow, "VALUE")
    except ImportError as err:
        errors.append(type(err.__cause__).__name__)
os.environ["SLOW_FAIL"] = "0"
import slow as again
print(errors, "slow" in sys.modules, again is not slow, again.VALUE, runs.count)
""",
}
EXPECTED = {"threads": "[42, 42] 1", "setattr": "1 True 1", "reload": "42 2 []",
            "failure": "['RuntimeError', 'RuntimeError'] True True 42 2"}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_deferred_module_semantics(tmp_path, scenario):
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "__init__.py").write_text(SLOW_PACKAGE)
    (tmp_path / "runs.py").write_text("count = 0\n")
    code = f"""
import sys
sys.path.insert(0, {str(tmp_path)!r})
from biomedgpt import startup
sys.meta_path.insert(0, startup._Finder(["slow"]))
import runs, slow
assert runs.count == 0 and startup.pending() == ["slow"]
""" + SCENARIOS[scenario]
    env = {"SLOW_FAIL": "1"} if scenario == "failure" else {}
    assert _python(code, **env) == EXPECTED[scenario]


def test_nothing_is_deferred_when_switched_off_or_torch_is_already_imported():
    code = """
import sys
from biomedgpt import startup
if sys.argv[1] == "torch-first":
    import torch
installed = startup.defer_torch_extras()
import torch
print(installed, len(startup.pending()), type(torch.export).__name__)
"""
    assert _python(code, "torch-first") == "False 0 module"
    assert _python(code, "off", BIOMEDGPT_DEFER_TORCH="0") == "False 0 module"


def test_ask_program_answers_the_same_without_running_the_deferred_modules(tiny_model_dir):
    """`biomedgpt ask` as a program (what a user runs): its answer is the one of a plain torch import, and no
    deferred module ran on the way (or the hook would save nothing)."""
    args = ["ask", "--model", str(tiny_model_dir), "--max-new-tokens", "6", "--num-beams", "2",
            "--repetition-penalty", "1", "--evidence", "0", "--smiles", "CCO", "--protein", "MKTAYIAKQR", "Hi?"]
    code = f"""
import contextlib, io, json
from biomedgpt import cli, startup
out = io.StringIO()
with contextlib.redirect_stdout(out):
    status, _ = cli._run({args!r}, program=True)
print(json.dumps({{"status": status, "answer": out.getvalue(), "pending": sorted(startup.pending())}}))
"""
    deferred = json.loads(_python(code))
    plain = json.loads(_python(code, BIOMEDGPT_DEFER_TORCH="0"))
    assert deferred["status"] == plain["status"] == 0
    assert deferred["answer"] == plain["answer"] and deferred["answer"].strip()
    assert deferred["pending"] == sorted(DEFERRED)
    assert plain["pending"] == []
