"""The ``petlab`` command line. ``petlab --help`` lists the commands."""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["main"]


def _party(args) -> int:
    from petlab.mpc.job import Job
    from petlab.mpc.party import run_party

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.role} %(levelname)s %(message)s")
    job = Job.load(args.job)
    run_party(job=job, role=args.role)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    party = sub.add_parser("party", help="run one role of an MPC job (started by the launcher)")
    party.add_argument("--role", required=True, choices=["gateway", "wallet", "dealer"])
    party.add_argument("--job", required=True, help="job file written by the launcher")
    party.set_defaults(func=_party)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)
