"""A faster `import torch` for the commands a user waits on (`biomedgpt ask`, `chat`).

`import torch` is most of a cold `biomedgpt ask` on a 2-core CPU (1.6-2.9 s of ~4 s, docs/performance.md), and a
third of it is modules that torch imports unconditionally but that eager inference on a CPU never runs: the Python
meta kernels and decompositions (`torch._meta_registrations`, used by meta tensors, FakeTensor, `torch.compile`,
`torch.export`), `torch.export` itself, and a few packages imported only to be reachable as `torch.<name>`
(`torch.distributions`, `torch.utils.data`, ...).

`defer_torch_extras()` installs an import hook, before torch is imported, under which each of those modules is
created but not executed. Its code runs, under the import system's lock for that module (as a plain import would
hold it), on the first use of the module: reading an attribute it does not have yet, setting or deleting one,
`dir()`, importing one of its submodules (the import system reads a package's `__path__`, which it gets back only
then) or reloading it. `__file__`, `__name__`, `__spec__` and the other attributes set at creation do not count:
`inspect.getmodule`, which torch calls while registering its own operators, reads `__file__` of every module in
`sys.modules`. Another thread that uses the module while it runs waits for it. If its code fails, every later use
raises an `ImportError` from that error, and the module leaves `sys.modules` so that a new import tries again.

The meta registrations are the exception: nothing reads their attributes, they only register kernels. So importing
`torch._dynamo`, `torch._inductor`, transformers, peft or accelerate (what compiles, traces or builds models on the
meta device), and running `torch.export`, first runs every deferred module (`complete()`). Operations on
`torch.device("meta")` tensors in the process's own code are not covered: those whose meta kernel is written in
Python fail with `NotImplementedError` until `complete()` runs. The `ask` and `chat` program uses none, which is why
only it installs the hook; Python code calling `biomedgpt.cli.main` never does.

The modules were chosen by measurement (`python -X importtime -c "import torch"`) and checked not to break torch's
own import; the list is tied to the pinned torch version (`TORCH_VERSION`): with any other version, with an
interpreter without the import-lock functions used here, or with `BIOMEDGPT_DEFER_TORCH=0`, nothing is deferred.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import re
import sys
import threading
import types
from collections.abc import Sequence
from importlib import _bootstrap

# The torch version these lists were measured against (requirements.txt pins it).
TORCH_VERSION = "2.13.0"
ENV_DISABLE = "BIOMEDGPT_DEFER_TORCH"  # "0" turns the hook off

# Cumulative import time of each in one `import torch` on the 2-core Zen 3 machine (session 12, -X importtime):
# meta registrations with the decompositions and prims they import 0.43 s, torch.export 0.29 s, the rest ~0.13 s.
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

# Importing one of these first runs every deferred module: they use the meta kernels. (Not
# torch._subclasses.fake_tensor: torch itself imports it; FakeTensor is used through dynamo and export.)
COMPLETE_BEFORE = ("transformers", "torch._dynamo", "torch._inductor", "peft", "accelerate")
# Running one of these deferred modules runs the others first (export traces with the meta kernels).
COMPLETES_ALL = ("torch.export",)

_pending_lock = threading.Lock()  # guards `_pending` only; never held while module code runs
_pending: list[types.ModuleType] = []


class _Deferral:
    """What a deferred module needs to run: its real loader and, for a package, its `__path__`; then whether it
    is running (and in which thread) or failed."""

    __slots__ = ("loader", "path", "runner", "error")

    def __init__(self, loader: importlib.abc.Loader, path: list[str] | None):
        self.loader, self.path = loader, path
        self.runner: int | None = None  # thread id while its code runs
        self.error: BaseException | None = None


def _deferral(module: types.ModuleType) -> _Deferral | None:
    return module.__dict__.get("_deferral")


class _DeferredModule(types.ModuleType):
    """A module whose code has not run yet (the class of a module between its creation and its first use)."""

    def __getattr__(self, name: str):
        if _deferral(self) is None:  # another thread has just run it
            return types.ModuleType.__getattribute__(self, name)
        if not _run(self):
            # Its own code (or an import it makes) looks for a name not defined yet: a plain partially
            # initialised module would raise this too, and `from pkg import sub` then imports the submodule.
            raise AttributeError(f"partially initialized module {self.__name__!r} has no attribute {name!r}")
        return getattr(self, name)

    def __setattr__(self, name: str, value) -> None:
        _run(self)
        types.ModuleType.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        _run(self)
        types.ModuleType.__delattr__(self, name)

    def __dir__(self) -> list[str]:
        _run(self)
        return types.ModuleType.__dir__(self)


def _run(module: types.ModuleType) -> bool:
    """Run `module`'s code if it has not run (or wait for the thread running it). Returns False when the caller
    is the thread running it (the module is partially initialised); raises ImportError if its code failed."""
    name = module.__name__
    state = _deferral(module)
    if state is None:
        return True
    if state.runner == threading.get_ident():
        return False
    lock = _bootstrap._get_module_lock(name)
    try:
        lock.acquire()
    except _bootstrap._DeadlockError:  # each of two threads runs a module the other needs: as a circular import
        return False
    try:
        state = _deferral(module)
        if state is None:  # another thread ran it while this one waited
            return True
        if state.error is not None:
            raise ImportError(f"deferred module {name} failed to run: {state.error!r}") from state.error
        _forget(module)
        state.runner = threading.get_ident()
        _set_loader(module, state.loader)
        spec = module.__spec__
        if state.path is not None:
            module.__dict__["__path__"] = state.path
        spec._initializing = True
        try:
            state.loader.exec_module(module)
        except BaseException as err:
            state.error, state.runner = err, None
            if sys.modules.get(name) is module:  # as a failed import: the next `import` tries again
                del sys.modules[name]
            raise ImportError(f"deferred module {name} failed to run: {err!r}") from err
        finally:
            spec._initializing = False
        object.__setattr__(module, "__class__", types.ModuleType)
        del module.__dict__["_deferral"]
    finally:
        lock.release()
    if name in COMPLETES_ALL:
        complete()
    return True


def _forget(module: types.ModuleType) -> None:
    with _pending_lock:
        if module in _pending:
            _pending.remove(module)


def _set_loader(module: types.ModuleType, loader: importlib.abc.Loader) -> None:
    """Give the module its real loader back (in place of the wrapper below) before its code runs."""
    module.__spec__.loader = module.__dict__["__loader__"] = loader


class _WrappingLoader(importlib.abc.Loader):
    """A real loader with another `exec_module`; everything else (create_module, get_source, get_data,
    is_package, get_resource_reader, ...) is the real loader's."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)


class _DeferringLoader(_WrappingLoader):
    """Creates the module as its real loader would, and leaves it unrun."""

    def exec_module(self, module: types.ModuleType) -> None:
        path = module.__dict__.pop("__path__", None)
        module.__dict__["_deferral"] = _Deferral(self.loader, path)
        object.__setattr__(module, "__class__", _DeferredModule)
        with _pending_lock:
            _pending.append(module)


class _CompletingLoader(_WrappingLoader):
    """The real loader of a module in COMPLETE_BEFORE, which first runs every deferred module (here, under that
    module's import lock, rather than in `find_spec`, under the global one)."""

    def exec_module(self, module: types.ModuleType) -> None:
        complete()
        _set_loader(module, self.loader)
        self.loader.exec_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, deferred: Sequence[str]):
        self.deferred = frozenset(deferred)

    def find_spec(self, name: str, path, target=None) -> importlib.machinery.ModuleSpec | None:
        if target is not None:  # a reload: run the module first if it never ran, then reload it as usual
            if _deferral(target) is not None:
                _run(target)
            return None
        if name not in self.deferred and name not in COMPLETE_BEFORE:
            return None
        # These are files in site-packages: the standard path finder locates them (asking the whole
        # `sys.meta_path` again would need this finder taken out of it, which other threads may be iterating).
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            if name in COMPLETE_BEFORE:  # found by another finder: complete now, before it loads
                complete()
            return None
        spec.loader = (_DeferringLoader if name in self.deferred else _CompletingLoader)(spec.loader)
        return spec


def defer_torch_extras(deferred: Sequence[str] = DEFERRED) -> bool:
    """Install the import hook for `deferred` if it is not installed, torch is not imported yet, is the pinned
    version, the interpreter has the import-lock functions this uses, and `BIOMEDGPT_DEFER_TORCH` is not 0.
    Returns whether the hook is installed."""
    if any(isinstance(finder, _Finder) for finder in sys.meta_path):
        return True
    if os.environ.get(ENV_DISABLE, "1") == "0" or "torch" in sys.modules:
        return False
    if not all(hasattr(_bootstrap, f) for f in ("_get_module_lock", "_DeadlockError")):
        return False
    if _installed_torch_version() != TORCH_VERSION:
        return False
    sys.meta_path.insert(0, _Finder(deferred))
    return True


def complete() -> None:
    """Run every deferred module that has not run yet (torch is then as after a plain `import torch`)."""
    while True:
        with _pending_lock:
            if not _pending:
                return
            module = _pending.pop(0)
        _run(module)


def pending() -> list[str]:
    """Names of the deferred modules whose code has not run."""
    with _pending_lock:
        return [module.__name__ for module in _pending]


def _installed_torch_version() -> str | None:
    """torch's version without importing it (or `importlib.metadata`, which scans every installed package): its
    generated `torch/version.py`."""
    spec = importlib.machinery.PathFinder.find_spec("torch")
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
