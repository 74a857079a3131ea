"""`irvs`: the command-line entry point. Each subcommand lives in `irvs_ros.commands.<name>`.

A command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`, and INTERMIXED = True
when positionals may come between options; it is imported only when its subcommand runs, so `irvs --help` stays
fast and torch-free.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> one-line help; the module irvs_ros.commands.<name> implements it.
COMMANDS: dict[str, str] = {
    "demos": "generate oracle demonstrations into a dataset store",
    "train": "train a policy from a YAML config (with key=value overrides)",
    "export": "export a trained checkpoint to one ONNX policy file",
    "quantize": "convert a policy file to int8 (AMX / VNNI CPUs) or fp16 (GPU), keeping its metadata",
    "eval": "run a policy file (or the oracle) for N seeded episodes and report the success rate",
    "select": "evaluate a run's checkpoints on selection scenes and export the best",
    "bench": "run a benchmark and write its results file",
    "demo": "the main job: the push_insert graph in simulation on the shipped policy (--particle: particle demo)",
    "ingest": "turn recorded episode bags (MCAP) into a training dataset",
    "bringup": "start a ROS graph (sim, push_insert, teleop_record) without ros2 launch: the launch files' nodes "
               "and parameters",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="irvs",
                                     description="irvs_ros: implicit policies, trained offline, run on ROS 2.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"irvs: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(f"irvs_ros.commands.{name}")
    sub = argparse.ArgumentParser(prog=f"irvs {name}", description=COMMANDS[name])
    module.add_arguments(sub)
    # A command with a positional before its KEY=VALUE items sets INTERMIXED so the items may follow options.
    args = sub.parse_intermixed_args(rest) if getattr(module, "INTERMIXED", False) else sub.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
