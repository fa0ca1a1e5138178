"""``python -m bench.faults [scenario ...]``: run the fault scenarios, print the table, write
bench/results/faults-latest.json; exit 1 when any scenario fails."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from bench.faults import report
from bench.faults.cluster import ClusterTiming, run_cluster
from bench.faults.scenarios import BY_NAME, SCENARIOS, Timing, run

logger = logging.getLogger("bench.faults")


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    ap.add_argument("scenarios", nargs="*", help=f"default: all of {', '.join(BY_NAME)}")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the kill")
    ap.add_argument("--after", type=float, default=6.0, help="seconds of load after the restart")
    ap.add_argument("--interval", type=float, default=0.25, help="pause between a client's sends")
    ap.add_argument("--conversations", type=int, default=4)
    ap.add_argument("--members", type=int, default=5, help="clients per conversation")
    ap.add_argument("--out", type=Path, help="JSON file (default bench/results/faults-latest.json)")
    ap.add_argument("--table", type=Path, help="only print the table of a results JSON file")
    ap.add_argument(
        "--cluster",
        action="store_true",
        help="cluster mode (issue 19): 3 NATS nodes, each killed in turn (bench/faults/cluster.py)",
    )
    ap.add_argument("--down", type=float, default=8.0, help="cluster: seconds a node stays down")
    ap.add_argument("--keep-logs", type=Path, help="cluster: copy every log here at the end")
    ap.add_argument("--log-level", default="WARNING", help="cluster: the services' log level")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap.parse_args(argv)


async def main_cluster(args: argparse.Namespace) -> list[dict[str, Any]]:
    timing = ClusterTiming(
        down=args.down,
        after=args.after,
        interval=args.interval,
        conversations=args.conversations,
        members=args.members,
        keep_logs=args.keep_logs,
        log_level=args.log_level,
    )
    if args.scenarios:  # steps: follower, meta-leader, or asset names
        timing.steps = list(args.scenarios)
    try:
        return [await run_cluster(timing)]
    except Exception as exc:  # a run that cannot run is a failing row, not a crash
        logger.exception("the cluster scenario could not run")
        return [{"scenario": "cluster", "ok": False, "why": [f"could not run: {exc!r}"]}]


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    timing = Timing(args.warmup, args.after, args.interval, args.conversations, args.members)
    chosen = [BY_NAME[n] for n in args.scenarios] if args.scenarios else SCENARIOS
    results = []
    for scenario in chosen:
        logger.info("scenario %s: kill -9 %s", scenario.name, scenario.what)
        try:
            result = await run(scenario, timing)
        except Exception as exc:  # a scenario that cannot run is a failing row, not a crash
            logger.exception("scenario %s could not run", scenario.name)
            result = {
                "scenario": scenario.name,
                "killed": scenario.what,
                "ok": False,
                "why": [f"could not run: {exc!r}"],
            }
        logger.info(
            "scenario %s: %s %s",
            scenario.name,
            "pass" if result["ok"] else "FAIL",
            "; ".join(result.get("why", [])),
        )
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.table:
        doc = json.loads(args.table.read_text())
        sys.stdout.write(report.table(doc["results"]) + "\n")
        return 0 if doc.get("ok") else 1
    if args.cluster:
        results = asyncio.run(main_cluster(args))
        out = args.out or report.RESULTS / "faults-cluster-latest.json"
    else:
        unknown = [n for n in args.scenarios if n not in BY_NAME]
        if unknown:
            logger.error("unknown scenario(s) %s; known: %s", unknown, ", ".join(BY_NAME))
            return 2
        results = asyncio.run(main_async(args))
        out = args.out
    settings = {
        k: str(v) if isinstance(v, Path) else v
        for k, v in vars(args).items()
        if k not in ("out", "table")
    }
    path = report.write_json(results, settings, out)
    sys.stdout.write(report.table(results) + "\n")
    logger.info("results written to %s", path)
    return 0 if all(r.get("ok") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
