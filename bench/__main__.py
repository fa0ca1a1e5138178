"""``python -m bench`` (``make bench``): run the benchmark scenarios and write the results.

    python -m bench                       # every scenario, full size (about 10-15 min)
    python -m bench --quick               # a short smoke run of every scenario
    python -m bench --scenario fanout     # one scenario
    python -m bench --scenario connects   # connects/s into one gateway (--connections N)
    python -m bench --scenario storm      # a killed gateway's clients resume on two others
    python -m bench --gateway-urls http://127.0.0.1:8001,http://127.0.0.1:8002
                                          # against gateways already running (make run)
    python -m bench --report              # rebuild latest.md and latency.png from results/

Results: ``bench/results/<timestamp>-<scenario>.json``, ``bench/results/latest.md`` (the
table), ``bench/results/latency.png``; logs of the processes under ``bench/results/raw/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from datetime import UTC, datetime

from bench import report, scenarios
from bench.machine import load_average, machine_info
from bench.runs import RESULTS, run_scenario
from bench.system import raise_nofile

logger = logging.getLogger("bench")

SCENARIOS = [
    "selfcheck",
    "idle",
    "connects",
    "storm",
    "fanout",
    "persisted",
    "groupcommit",
    "scaleout",
]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--scenario",
        default="all",
        choices=[*SCENARIOS, "all"],
        help="selfcheck: the generator against a trivial Node server (its ceiling)",
    )
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument(
        "--gateway-urls",
        default="",
        help="comma-separated gateway base URLs of a running stack (default: start one)",
    )
    p.add_argument("--threads", type=int, default=2, help="generator worker threads")
    p.add_argument(
        "--idle-stages",
        type=_ints,
        default=None,
        help="connection counts to measure at (default 10000,19800)",
    )
    p.add_argument(
        "--connections",
        type=int,
        default=None,
        help="connects: clients per round (default 5000); storm: clients (default 10000)",
    )
    p.add_argument(
        "--connect-concurrency",
        type=int,
        default=200,
        help="connects: handshakes in flight at once",
    )
    p.add_argument(
        "--connect-client",
        choices=("raw", "ws"),
        default="raw",
        help="connects, storm: the handshake (storm: the resume) on a bare socket (raw) or "
        "through the Node ws client",
    )
    p.add_argument(
        "--fanout-rates",
        type=_floats,
        default=None,
        help="typing:start events/s summed over all senders",
    )
    p.add_argument("--persist-rates", type=_floats, default=None, help="message:send/s")
    p.add_argument("--scaleout-rates", type=_floats, default=None)
    p.add_argument("--scaleout-gateways", type=_ints, default=[1, 2, 3])
    p.add_argument(
        "--replicas",
        type=_ints,
        default=[1, 2],
        help="conversation-service replica counts for persisted",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per fanout rate, the median counts (default 3, --quick 1)",
    )
    p.add_argument("--duration", type=float, default=None, help="seconds per load step")
    p.add_argument(
        "--conversation-env",
        default="",
        help="extra env for the conversation service, K=V,K=V (e.g. group commit off)",
    )
    p.add_argument("--gateway-env", default="", help="extra env for the gateways, K=V,K=V")
    p.add_argument(
        "--gateway-src",
        default="",
        help="run the gateways from another source tree (e.g. a `git worktree` of an older "
        "commit: <worktree>/services/gateway/src), to measure a change's effect",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the gateways during fanout steps (storm: gateway-2 and conversation-1)",
    )
    p.add_argument("--profile-rates", type=_floats, default=None, help="fanout rates to profile")
    p.add_argument(
        "--pyinstrument", action="store_true", help="run gateway-1 under pyinstrument (fanout)"
    )
    p.add_argument("--label", default="", help="a note stored with the results (what changed)")
    p.add_argument(
        "--transport",
        choices=("ws", "socketio"),
        default="ws",
        help="the clients' endpoint: /ws or /socket.io/ (Socket.IO over WebSocket)",
    )
    p.add_argument("--no-write", action="store_true", help="do not write results")
    p.add_argument("--report", action="store_true", help="only rebuild latest.md and the plot")
    return p.parse_args(argv)


def _src_commit(path: str) -> str:
    out = subprocess.run(
        ["git", "-C", path, "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return f"{path} @ {out.stdout.strip() or '?'}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenarios.TRANSPORT = args.transport
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S"
    )
    if args.report:
        report.write_latest(RESULTS)
        return 0
    nofile = raise_nofile()
    logger.info("RLIMIT_NOFILE %s", nofile)
    if shutil.which("node") is None:
        logger.error("node (>= 20) is required for the load generator")
        return 2
    names = SCENARIOS if args.scenario == "all" else [args.scenario]
    RESULTS.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        started = datetime.now(UTC)
        machine = machine_info()
        logger.info("== %s%s", name, " (quick)" if args.quick else "")
        try:
            result = run_scenario(name, args)
        except Exception:
            logger.exception("scenario %s failed", name)
            failed.append(name)
            continue
        doc = {
            "scenario": name,
            "quick": args.quick,
            "label": args.label,
            "transport": args.transport,
            "startedAt": started.isoformat().replace("+00:00", "Z"),
            "finishedAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "machine": machine,
            "loadAvgAtEnd": load_average(),
            "target": args.gateway_urls or "stack started by the bench",
            "gatewaySrc": _src_commit(args.gateway_src) if args.gateway_src else None,
            "result": result,
        }
        if not args.no_write:
            path = RESULTS / f"{started:%Y%m%dT%H%M%SZ}-{name}{'-quick' if args.quick else ''}.json"
            path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
            logger.info("wrote %s", path.relative_to(RESULTS.parent.parent))
    if not args.no_write:
        report.write_latest(RESULTS)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
