"""`irvs train CONFIG.yaml [key=value ...] [--resume] [--out RUN_DIR]`: train a policy offline.

CONFIG may also be a run directory (it holds config.yaml); that directory is then the run directory.
Under torchrun (`torchrun --nproc_per_node 2 -m irvs_ros.cli train ...`) every process runs this command and
the trainer uses DistributedDataParallel; only rank 0 prints and writes files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

HELP = "train a policy from a YAML config (with key=value overrides)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config YAML (or a run directory holding config.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, dotted keys for nested values (e.g. steps=200 params.width=64)")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.pt")
    parser.add_argument("--out", metavar="RUN_DIR", default=None, help="run directory (default: out_dir/name)")
    parser.add_argument("--quiet", action="store_true", help="only print the final result")
    # Let overrides follow the flags too (`irvs train RUN --resume steps=2000`); plain parse_args stops at them.
    parser.parse_args = parser.parse_intermixed_args  # type: ignore[method-assign]


def run(args: argparse.Namespace) -> int:
    from irvs_ros.data.store import DatasetError
    from irvs_ros.learn.checkpoint import CheckpointError
    from irvs_ros.learn.config_schema import ConfigError
    from irvs_ros.learn.train_config import load_config
    from irvs_ros.learn.trainer import TrainError, train
    from irvs_ros.runtime.spec import SpecError

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.WARNING if args.quiet or rank != 0 else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    config_path, out = Path(args.config), args.out
    if config_path.is_dir():
        out = out or str(config_path)
        config_path = config_path / "config.yaml"
    try:
        config = load_config(config_path, args.overrides)
        result = train(config, run_dir=out, resume=args.resume)
    except (ConfigError, SpecError, DatasetError, TrainError, CheckpointError) as e:
        print(f"irvs train: error: {e}", file=sys.stderr)
        return 2
    if rank == 0:
        print(f"run dir: {result.run_dir}")
        print(f"step: {result.step}")
        if result.train_metrics:
            print("train: " + json.dumps(result.train_metrics, sort_keys=True))
        if result.eval_metrics:
            print("eval: " + json.dumps(result.eval_metrics, sort_keys=True, default=str))
    return 0
