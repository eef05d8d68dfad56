"""`biomedgpt train STAGE --config FILE [key=value ...] [--resume]` and `biomedgpt plot RUN_DIR`."""

from __future__ import annotations

import json
from pathlib import Path

from biomedgpt.constants import STAGE_NAMES


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train one stage (encoder-molecule, encoder-protein, lm, align, finetune)",
        description="Train one BioMedGPT stage. The config (YAML/TOML) is layered over the stage's defaults; "
                    "key=value arguments override it (dotted keys, e.g. optim.lr=3e-4 schedule.max_steps=100). "
                    "Runs under `accelerate launch` for several processes/GPUs.")
    train.add_argument("stage", choices=STAGE_NAMES)
    # `--config FILE key=value ...`: argparse cannot place positionals after an option, so the overrides that
    # follow the file are taken by --config itself; overrides may also come before --config.
    train.add_argument("--config", nargs="+", default=None, metavar="FILE",
                       help="stage config file (.yaml, .yml or .toml), then any key=value overrides")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    train.add_argument("--resume", action="store_true",
                       help="continue from the newest checkpoint in output_dir (exactly where it stopped)")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    train.set_defaults(func=run_train)

    plot = subparsers.add_parser("plot", help="draw loss and learning-rate curves of a training run to a PNG")
    plot.add_argument("run_dir", type=Path)
    plot.add_argument("--out", type=Path, default=None, help="PNG path (default RUN_DIR/curves.png)")
    plot.set_defaults(func=run_plot)


def run_train(args) -> int:
    from biomedgpt.train.config import dump_config, load_config
    from biomedgpt.train.stages import STAGE_DEFAULTS

    path, overrides = None, list(args.overrides)
    for item in args.config or []:
        if "=" in item or path is not None:
            overrides.append(item)
        else:
            path = Path(item)
    config = load_config(path, args.stage, overrides, STAGE_DEFAULTS[args.stage])
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    import transformers

    from biomedgpt.train.loop import train

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    summary = train(config, resume=args.resume)
    if summary["process"] == 0:
        print(json.dumps({k: v for k, v in summary.items() if v is not None}))
    return 0


def read_metrics(run_dir: Path) -> list[dict]:
    from biomedgpt.errors import UserError

    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"no metrics.jsonl in {run_dir} (is it a training run folder?)")
    from biomedgpt.train.loop import parse_metrics

    return parse_metrics(path.read_text())


def run_plot(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from biomedgpt.errors import UserError
    from biomedgpt.io import atomic_path

    rows = read_metrics(args.run_dir)
    train_rows = [r for r in rows if r.get("loss") is not None]
    val_rows = [r for r in rows if r.get("val_loss") is not None]
    if not train_rows:
        raise UserError(f"{args.run_dir / 'metrics.jsonl'} has no logged training steps yet")
    figure, (loss_axis, lr_axis) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    loss_axis.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], label="train")
    if val_rows:
        loss_axis.plot([r["step"] for r in val_rows], [r["val_loss"] for r in val_rows], "o-", label="validation")
    loss_axis.set_ylabel("loss")
    loss_axis.set_yscale("log")
    loss_axis.legend()
    loss_axis.set_title(str(args.run_dir))
    lr_axis.plot([r["step"] for r in train_rows], [r["lr"] for r in train_rows], color="tab:orange")
    lr_axis.set_ylabel("learning rate")
    lr_axis.set_xlabel("optimizer step")
    figure.tight_layout()
    out = args.out or args.run_dir / "curves.png"
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    print(out)
    return 0
