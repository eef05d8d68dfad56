"""The one training loop, for every stage (accelerate for devices and processes).

Reading order: `train` builds the run (config → stage parts → optimizer → resume), then each optimizer step
takes `grad_accum` micro-batches of this process's shard of the global batch, normalises the loss by the
target count of the *whole* global batch, steps, logs, evaluates and checkpoints.

Data order is a pure function of (seed, epoch): a global batch of `batch_size × processes` indices is planned
per step and each process takes its slice. Resuming at step s therefore needs only s, and 1 process with batch
2B sees exactly the batches that 2 processes with batch B see between them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from biomedgpt.errors import UserError
from biomedgpt.io import atomic_write_text
from biomedgpt.train.checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from biomedgpt.train.config import TrainConfig, dump_config
from biomedgpt.train.stages import Prepared, prepare

logger = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """The loss (or gradient norm) became NaN or infinite; the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------- data order
def epoch_plan(lengths: list[int], global_batch: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """Global batches for one epoch (the incomplete last batch is dropped so every process steps together).

    With `group_by_length`, indices are shuffled, cut into mega-batches of 32 global batches, each sorted by
    length, then the batch order is shuffled: batches hold similar lengths yet the epoch stays random."""
    generator = torch.Generator().manual_seed(hash((seed, epoch, 104729)) & 0x7FFF_FFFF_FFFF)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if group_by_length:
        mega = global_batch * 32
        order = [i for s in range(0, len(order), mega)
                 for i in sorted(order[s : s + mega], key=lambda i: -lengths[i])]
    batches = [order[s : s + global_batch] for s in range(0, len(order) - global_batch + 1, global_batch)]
    if group_by_length:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


class BatchStream:
    """This process's micro-batches, addressable by (optimizer step, accumulation index): resume is a seek.

    One optimizer step consumes a planned batch of batch_size x processes x grad_accum indices; micro-batch i
    is its i-th slice of batch_size x processes, and each process takes its own batch_size rows of that. So
    batch 2B equals 2 processes x B equals batch B x 2 accumulation steps, example for example."""

    def __init__(self, dataset, config: TrainConfig, rank: int, world: int) -> None:
        self.dataset, self.config, self.rank, self.world = dataset, config, rank, world
        self.per_process = config.schedule.batch_size
        self.per_step = self.per_process * world * config.schedule.grad_accum
        self.lengths = dataset.lengths()
        self.per_epoch = len(self.lengths) // self.per_step
        if self.per_epoch == 0:
            raise UserError(f"data.train has {len(self.lengths)} examples, fewer than one optimizer step needs "
                            f"({self.per_process} x {world} processes x {config.schedule.grad_accum} accumulation "
                            "steps): lower schedule.batch_size")
        self._plans: dict[int, list[list[int]]] = {}

    def position(self, step: int) -> tuple[int, int]:
        return divmod(step, self.per_epoch)

    def get(self, step: int, micro: int):
        epoch, k = self.position(step)
        if epoch not in self._plans:
            self._plans = {epoch: epoch_plan(self.lengths, self.per_step, self.config.seed, epoch,
                                             self.config.group_by_length)}
        start = micro * self.per_process * self.world + self.rank * self.per_process
        return self.dataset.collate(self._plans[epoch][k][start : start + self.per_process], epoch)


# ---------------------------------------------------------------------------------------------- setup
def _accelerator(config: TrainConfig):
    import os

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    precision = config.precision
    if precision == "auto":  # an `accelerate launch` config (e.g. DeepSpeed bf16) decides, else the hardware
        env = os.environ.get("ACCELERATE_MIXED_PRECISION")
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        precision = "bf16" if env == "bf16" or (env in (None, "no") and cuda_bf16) else "fp32"
    mixed = "bf16" if precision == "bf16" else "no"
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed:
        AcceleratorState._reset_state()  # a second run in this process (tests, notebooks) with other precision
    # Unused parameters are normal here (a batch with no protein leaves the protein adapter without a gradient).
    ddp = DistributedDataParallelKwargs(find_unused_parameters=config.stage in ("align", "finetune"))
    # cpu=True on a machine without CUDA makes processes started by torchrun / `accelerate launch --multi_gpu`
    # join one gloo process group (accelerate's MULTI_CPU) instead of each training alone.
    accelerator = Accelerator(mixed_precision=mixed, kwargs_handlers=[ddp], cpu=not torch.cuda.is_available())
    deepspeed = accelerator.state.deepspeed_plugin
    if deepspeed is not None:  # we pass no DataLoader to prepare(), so DeepSpeed is told the batch size here
        deepspeed.deepspeed_config["train_micro_batch_size_per_gpu"] = config.schedule.batch_size
    return accelerator


def _optimizer(objective: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over trainable parameters only; weight decay on >= 2-D tensors only (matrices, embeddings)."""
    params = [p for p in objective.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = config.optim
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=opt.lr, betas=(opt.beta1, opt.beta2),
                             eps=opt.eps)


def _scheduler(optimizer, config: TrainConfig, total_steps: int):
    opt = config.optim

    def factor(step: int) -> float:
        if step < opt.warmup_steps:
            return (step + 1) / opt.warmup_steps
        if opt.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - opt.warmup_steps) / max(1, total_steps - opt.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if opt.scheduler == "cosine" else 1 - progress
        return opt.min_lr_ratio + (1 - opt.min_lr_ratio) * shape

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("biomedgpt", "torch", "transformers", "accelerate", "peft", "tokenizers", "numpy", "rdkit"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _write_run_info(run_dir: Path, config: TrainConfig, accelerator, resumed_from: Path | None) -> None:
    info_path = run_dir / "run.json"
    entry = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv, "git_commit": _git_commit(),
             "versions": _versions(), "seed": config.seed, "processes": accelerator.num_processes,
             "device": str(accelerator.device), "mixed_precision": accelerator.mixed_precision}
    if resumed_from is None:
        info = entry
    else:
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        info.setdefault("resumes", []).append({**entry, "from": str(resumed_from)})
    atomic_write_text(info_path, json.dumps(info, indent=2) + "\n")
    atomic_write_text(run_dir / "config.yaml", dump_config(config))


RESUME_NEUTRAL = {"progress", "threads", "schedule.save_every", "schedule.eval_every", "schedule.log_every",
                  "schedule.keep_checkpoints"}


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _warn_config_changes(run_dir: Path, config: TrainConfig) -> None:
    """A resumed run is only an exact continuation if the config is the same: name any key that changed."""
    import yaml

    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved, now = _flatten(yaml.safe_load(saved_path.read_text()) or {}), _flatten(config.to_dict())
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in RESUME_NEUTRAL)
    if changed:
        logger.warning("resuming with a changed config (%s): the run will not equal an uninterrupted one",
                       ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed))


def parse_metrics(text: str) -> list[dict[str, Any]]:
    """JSONL rows, skipping a line cut short by a crash mid-write."""
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class MetricsLog:
    """Append-only JSONL metrics (main process). On resume, rows past the checkpoint are dropped first, so
    the log reads as one uninterrupted run."""

    def __init__(self, path: Path, enabled: bool, keep_until_step: int | None) -> None:
        self.path, self.enabled = path, enabled
        if enabled and keep_until_step is not None and path.is_file():
            rows = [row for row in parse_metrics(path.read_text()) if row.get("step", 0) <= keep_until_step]
            atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
        elif enabled and keep_until_step is None:
            atomic_write_text(path, "")

    def write(self, row: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------------------------- the loop
def _reduce_sum(accelerator, value: float) -> float:
    if accelerator.num_processes == 1:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(tensor, reduction="sum").item())


@torch.no_grad()
def evaluate(prepared: Prepared, config: TrainConfig, accelerator) -> float:
    """Mean loss per target over the whole validation set (every process takes a strided share)."""
    dataset = prepared.val_set
    objective = prepared.objective
    objective.eval()
    loss_sum, count = 0.0, 0
    size = config.schedule.batch_size
    indices = list(range(accelerator.process_index * size, len(dataset), size * accelerator.num_processes))
    for start in indices:
        batch = dataset.collate(list(range(start, min(start + size, len(dataset)))), 0)
        with accelerator.autocast():
            loss, targets = objective(batch)
        loss_sum, count = loss_sum + float(loss), count + int(targets)
    prepared.train_mode()
    return _reduce_sum(accelerator, loss_sum) / max(1.0, _reduce_sum(accelerator, count))


def _diverged(step: int, what: str, value: float | str, run_dir: Path) -> TrainingDiverged:
    checkpoint = latest_checkpoint(run_dir)
    where = (f"the last good checkpoint is {checkpoint} (resume with --resume after lowering optim.lr)"
             if checkpoint else "no checkpoint was written before it")
    return TrainingDiverged(f"training stopped at step {step}: the {what} is {value}; {where}")


def _forward_backward(module, micro: list, accelerator) -> float:
    """Accumulate gradients of one optimizer step; return its loss per target over all processes.

    Each micro-batch's summed loss is divided by the target count of the whole step (every micro-batch of
    every process) and multiplied by the process count, because DDP averages gradients over processes."""
    world = accelerator.num_processes
    targets = max(_reduce_sum(accelerator, sum(b.num_targets() for b in micro)), 1.0)
    loss_sum = 0.0
    for i, batch in enumerate(micro):
        sync = contextlib.nullcontext() if i == len(micro) - 1 else accelerator.no_sync(module)
        with sync, accelerator.autocast():
            loss, _ = module(batch)
            accelerator.backward(loss * world / targets)
        loss_sum += float(loss.detach())
    return _reduce_sum(accelerator, loss_sum) / targets


def train(config: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) one stage. Returns a summary (final loss, validation loss, steps, throughput)."""
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, resume)
    finally:
        torch.set_num_threads(threads)


def _train(config: TrainConfig, resume: bool) -> dict[str, Any]:
    accelerator = _accelerator(config)
    run_dir = Path(config.output_dir)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None and not resume:
        raise UserError(f"{run_dir} already holds a run (checkpoint {checkpoint.name}): pass --resume to continue "
                        "it or choose another output_dir")
    if resume and checkpoint is None:
        logger.warning("--resume: no checkpoint in %s; starting from scratch", run_dir)
    prepared = prepare(config)
    stream = BatchStream(prepared.train_set, config, accelerator.process_index, accelerator.num_processes)
    sched = config.schedule
    total_steps = sched.max_steps or max(1, math.ceil(sched.epochs * stream.per_epoch))
    optimizer = _optimizer(prepared.objective, config)
    scheduler = _scheduler(optimizer, config, total_steps)
    prepared.train_mode()
    module, optimizer = accelerator.prepare(prepared.objective, optimizer)
    inner = accelerator.unwrap_model(module)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {"step": 0, "tokens": 0, "elapsed_s": 0.0}
    if checkpoint is not None:
        _warn_config_changes(run_dir, config)
        state = load_checkpoint(checkpoint, inner, optimizer, scheduler, accelerator)
        logger.warning("resuming from %s (step %d)", checkpoint, state["step"])
    if accelerator.is_main_process:
        _write_run_info(run_dir, config, accelerator, checkpoint)
    metrics = MetricsLog(run_dir / "metrics.jsonl", accelerator.is_main_process,
                         state["step"] if checkpoint is not None else None)
    summary = _run_steps(prepared, module, inner, optimizer, scheduler, stream, config, accelerator, run_dir,
                         metrics, state, total_steps)
    if accelerator.is_main_process:
        prepared.finalize(run_dir)
        prepared.model.save_pretrained(run_dir / "model")
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    accelerator.wait_for_everyone()
    return summary


def _run_steps(prepared, module, inner, optimizer, scheduler, stream, config, accelerator, run_dir, metrics, state,
               total_steps) -> dict[str, Any]:
    from tqdm.auto import tqdm

    sched, world = config.schedule, accelerator.num_processes
    step, last_loss, val_loss = state["step"], state.get("loss"), state.get("val_loss")
    params = [p for p in module.parameters() if p.requires_grad]
    bar = tqdm(total=total_steps, initial=step, desc=config.stage, dynamic_ncols=True,
               disable=not (accelerator.is_main_process and config.progress))
    window_start, window_tokens, window_samples = time.perf_counter(), 0, 0
    run_start = time.perf_counter() - state["elapsed_s"]
    while step < total_steps:
        micro = [stream.get(step, i) for i in range(sched.grad_accum)]
        loss_value = _forward_backward(module, micro, accelerator)
        if not math.isfinite(loss_value):
            bar.close()
            raise _diverged(step + 1, "loss", loss_value, run_dir)
        grad_norm = None
        if config.optim.max_grad_norm > 0:
            grad_norm = float(accelerator.clip_grad_norm_(params, config.optim.max_grad_norm))
            if not math.isfinite(grad_norm):
                bar.close()
                raise _diverged(step + 1, "gradient norm", grad_norm, run_dir)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        last_loss = loss_value
        tokens = _reduce_sum(accelerator, sum(b.num_tokens() for b in micro))
        state["tokens"] += int(tokens)
        window_tokens += tokens
        window_samples += sched.batch_size * sched.grad_accum * world
        if step % sched.log_every == 0 or step == total_steps:
            seconds = max(time.perf_counter() - window_start, 1e-9)
            epoch, _ = stream.position(step)
            row = {"step": step, "epoch": epoch, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                   "tokens": state["tokens"], "tokens_per_s": window_tokens / seconds,
                   "samples_per_s": window_samples / seconds, "elapsed_s": time.perf_counter() - run_start}
            metrics.write(row)
            bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{row['tokens_per_s']:.0f}", refresh=False)
            window_start, window_tokens, window_samples = time.perf_counter(), 0, 0
        bar.update(1)
        at_end = step == total_steps
        if prepared.val_set is not None and ((sched.eval_every and step % sched.eval_every == 0) or at_end):
            val_loss = evaluate(prepared, config, accelerator)
            metrics.write({"step": step, "val_loss": val_loss})
        if step % sched.save_every == 0 or at_end:
            bad = next((name for name, p in inner.named_parameters() if p.requires_grad and not p.isfinite().all()),
                       None)
            if bad is not None:  # never overwrite a good checkpoint with broken weights
                bar.close()
                raise _diverged(step, f"parameter {bad}", "not finite", run_dir)
            epoch, position = stream.position(step)
            state.update(step=step, epoch=epoch, position=position, loss=last_loss, val_loss=val_loss,
                         world_size=world, elapsed_s=time.perf_counter() - run_start)
            save_checkpoint(run_dir, inner, optimizer, scheduler, state, accelerator, sched.keep_checkpoints)
    bar.close()
    elapsed = time.perf_counter() - run_start
    cache = prepared.cache
    return {"stage": config.stage, "process": accelerator.process_index, "steps": step, "loss": last_loss,
            "val_loss": val_loss, "tokens": state["tokens"],
            "elapsed_s": elapsed, "tokens_per_s": state["tokens"] / max(elapsed, 1e-9),
            "encoder_cache": None if cache is None else {"hits": cache.hits, "misses": cache.misses}}
