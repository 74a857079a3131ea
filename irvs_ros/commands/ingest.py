"""`irvs ingest RECORDINGS --out DATASET`: recorded episode bags (recorder_node) -> a training dataset file.

RECORDINGS is a recordings folder (one rosbag2 directory per episode) or one episode bag. Each usable episode is
sampled at the policy rate: the newest camera image resized to the training resolution, state = effector xy
(/irvs/ee_pose) + setpoint xy, action = the change of the setpoint to the next sample, reward 1 at the end of a
successful episode (see irvs_ros.data.ingest). Discarded, unfinished (.partial), unreadable and (by default)
unlabeled episodes are skipped with a message.
"""

from __future__ import annotations

import argparse
import sys

HELP = "turn recorded episode bags (MCAP) into a training dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recordings", help="recordings folder of recorder_node, or one episode bag directory")
    parser.add_argument("--out", required=True, help="dataset file to write (.h5)")
    parser.add_argument("--image-size", default="120x90", metavar="WxH",
                        help="training image width x height (default 120x90, IBC's real-robot input)")
    parser.add_argument("--rate", type=float, default=5.0, help="samples per second, the policy rate (default 5)")
    parser.add_argument("--action-limit", type=float, default=0.1,
                        help="per-axis setpoint step bound in m, stored as the dataset's action limits (default 0.1)")
    parser.add_argument("--include-unlabeled", action="store_true",
                        help="keep episodes without a success / failure label, as failures")


def run(args: argparse.Namespace) -> int:
    from irvs_ros.data.ingest import IngestError, ingest, parse_image_size
    from irvs_ros.data.store import Dataset, DatasetError

    try:
        size = parse_image_size(args.image_size)
        command = (f"irvs ingest {args.recordings} --out {args.out} --image-size {args.image_size} --rate {args.rate}"
                   f" --action-limit {args.action_limit}" + (" --include-unlabeled" if args.include_unlabeled else ""))
        report = ingest(args.recordings, args.out, image_size=size, rate=args.rate, action_limit=args.action_limit,
                        include_unlabeled=args.include_unlabeled, command=command)
    except (IngestError, DatasetError, FileNotFoundError) as exc:
        print(f"irvs ingest: {exc}", file=sys.stderr)
        return 2
    ds = Dataset.open(args.out)
    print(f"wrote {ds.num_episodes} episode(s), {ds.num_steps} steps ({int(ds.success.sum())} successful) to "
          f"{args.out}; skipped {len(report.skipped)}")
    return 0
