"""``ppo-probe`` command line: ``report RUN`` prints the per-cycle table (more commands to come)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .analysis.report import analyze
from .errors import RunFormatError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppo-probe", description="Find what is silently wrong in a PPO training run."
    )
    parser.add_argument("--version", action="version", version=f"ppo-probe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="print the per-cycle metrics of a run")
    report.add_argument("run", help="run directory written by ppo_probe.watch")
    report.add_argument("--target-kl", type=float, default=None,
                        help="default: [tool.ppo_probe] target_kl, else 0.02")
    report.add_argument("--clip-coef", type=float, default=None,
                        help="default: [tool.ppo_probe] clip_coef, else inferred from the run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "report":
            print(analyze(args.run, target_kl=args.target_kl, clip_coef=args.clip_coef))
            return 0
    except (RunFormatError, ValueError) as exc:
        print(f"ppo-probe: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
