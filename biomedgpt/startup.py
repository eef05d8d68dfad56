"""A faster `import torch` for the commands a user waits on (`biomedgpt ask`, `chat`).

`import torch` is most of a cold `biomedgpt ask` on a 2-core CPU (1.6-2.9 s of ~4 s, docs/performance.md), and a
third of it is modules that torch imports unconditionally but that eager inference on a CPU never runs: the Python
meta kernels and decompositions (`torch._meta_registrations`, used by meta tensors, FakeTensor, `torch.compile`,
`torch.export`), `torch.export` itself, and a few packages imported only to be reachable as `torch.<name>`
(`torch.distributions`, `torch.utils.data`, ...).

`defer_torch_extras()` installs an import hook, before torch is imported, under which each of those modules is
created but not executed: its code runs on the first access to any attribute it does not have yet (as
`importlib.util.LazyLoader`, except that `__file__`, `__spec__` and the other attributes set at creation do not
trigger it: `inspect.getmodule`, which torch calls while registering its own operators, reads `__file__` of every
module in `sys.modules`). A deferred package also runs before any of its submodules is imported, as without the
hook (the import system reads its `__path__`, which it gets back only then). A deferred module that is used is
therefore loaded when used, as if imported then.

The meta registrations are the exception: nothing reads their attributes, they only register kernels. Everything
that needs those kernels goes through `torch._dynamo`, `torch._inductor`, `torch.export` or transformers (which
builds models on the meta device), so importing any of those (or running `torch.export`) first runs every deferred
module (`complete()`). The modules deferred here were chosen by measurement (`python -X importtime -c "import torch"`)
and checked not to break torch's own import; the list is tied to the pinned torch version (`TORCH_VERSION`): with
any other version, or with `BIOMEDGPT_DEFER_TORCH=0`, nothing is deferred.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import threading
import types
from collections.abc import Sequence

# The torch version these lists were measured against (requirements.txt pins it).
TORCH_VERSION = "2.13.0"

# Cumulative import time of each in one `import torch` on the 2-core Zen 3 machine (session 12, -X importtime):
# meta registrations with the decompositions and prims they import 0.43 s, torch.export 0.29 s, the rest 0.15 s.
DEFERRED = (
    "torch._meta_registrations",
    "torch.distributed._meta_registrations",
    "torch.export",
    "torch.distributions",
    "torch.masked",
    "torch.profiler",
    "torch.quantization",
    "torch.utils.data",
    "torchgen.model",
)

# Importing one of these (or a submodule) first runs every deferred module: they use the meta kernels. (Not
# torch._subclasses.fake_tensor: torch itself imports it; FakeTensor is used through dynamo and export.)
COMPLETE_BEFORE = ("transformers", "torch._dynamo", "torch._inductor", "peft", "accelerate")
# Running one of these deferred modules runs the others too (export traces with the meta kernels).
COMPLETES_ALL = ("torch.export",)

_lock = threading.RLock()
_pending: list[types.ModuleType] = []


class _DeferredModule(types.ModuleType):
    """A module whose code has not run yet; the first access to a missing attribute runs it."""

    def __getattr__(self, name: str):
        _execute(self)
        return getattr(self, name)


def _execute(module: types.ModuleType) -> None:
    with _lock:
        if type(module) is not _DeferredModule:  # another thread got here first
            return
        loader = module.__dict__.pop("_deferred_loader")
        if "_deferred_path" in module.__dict__:
            module.__path__ = module.__dict__.pop("_deferred_path")
        module.__class__ = types.ModuleType
        if module in _pending:
            _pending.remove(module)
        loader.exec_module(module)
    if module.__name__ in COMPLETES_ALL:
        complete()


class _DeferringLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        with _lock:
            module.__dict__["_deferred_loader"] = self.loader
            if "__path__" in module.__dict__:  # a package: importing a submodule reads `__path__`, which runs it first
                module.__dict__["_deferred_path"] = module.__dict__.pop("__path__")
            module.__class__ = _DeferredModule
            _pending.append(module)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, deferred: Sequence[str]):
        self.deferred = frozenset(deferred)

    def find_spec(self, name: str, path, target=None) -> importlib.machinery.ModuleSpec | None:
        if any(name == root or name.startswith(root + ".") for root in COMPLETE_BEFORE):
            complete()
            return None
        if name not in self.deferred:
            return None
        # torch's modules are files in site-packages: the standard path finder locates them (asking the whole
        # `sys.meta_path` again would need this finder taken out of it, which other threads may be iterating).
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _DeferringLoader(spec.loader)
        return spec


def defer_torch_extras(deferred: Sequence[str] = DEFERRED) -> bool:
    """Install the import hook for `deferred` if torch is not imported yet, is the pinned version and
    `BIOMEDGPT_DEFER_TORCH` is not 0. Returns whether it did."""
    if os.environ.get("BIOMEDGPT_DEFER_TORCH", "1") == "0" or "torch" in sys.modules:
        return False
    if any(isinstance(finder, _Finder) for finder in sys.meta_path):
        return True
    if _installed_torch_version() != TORCH_VERSION:
        return False
    sys.meta_path.insert(0, _Finder(deferred))
    return True


def complete() -> None:
    """Run every deferred module that has not run yet (torch is then as after a plain `import torch`)."""
    while True:
        with _lock:
            if not _pending:
                return
            module = _pending[0]
        _execute(module)


def pending() -> list[str]:
    """Names of the deferred modules whose code has not run."""
    with _lock:
        return [module.__name__ for module in _pending]


def _installed_torch_version() -> str | None:
    """torch's version without importing it (or `importlib.metadata`, which scans every installed package): its
    generated `torch/version.py`."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        try:
            text = open(os.path.join(folder, "version.py"), encoding="utf-8").read()
        except OSError:
            continue
        match = re.search(r"^__version__\s*=\s*['\"]([^'\"+]+)", text, re.MULTILINE)
        return match.group(1) if match else None
    return None
