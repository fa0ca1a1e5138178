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
import contextlib
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import connects, report, scenarios
from bench.generator import LOADGEN_DIR, ensure_node_modules
from bench.machine import load_average, machine_info
from bench.profiling import pyinstrument_argv
from bench.system import Gateway, System, external_system, raise_nofile, started_stack

logger = logging.getLogger("bench")

RESULTS = Path(__file__).resolve().parent / "results"
RAW = RESULTS / "raw"
PROFILES = RESULTS / "profiles"
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
# The conversation service's group commit: most writes of one conversation per batch.
GROUP_COMMIT_ENV = "PARLEY_CONVERSATION_MAX_BATCH"


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


def _env_pairs(text: str) -> dict[str, str]:
    out = {}
    for pair in text.split(","):
        if "=" in pair:
            k, v = pair.split("=", 1)
            out[k.strip()] = v.strip()
    return out


@contextlib.contextmanager
def system_for(
    args: argparse.Namespace,
    name: str,
    *,
    gateways: int,
    replicas: int = 1,
    conv_env: dict[str, str] | None = None,
) -> Iterator[System]:
    if args.gateway_urls:
        urls = [u.strip() for u in args.gateway_urls.split(",") if u.strip()]
        yield external_system(urls)
        return
    extra = {
        "conversation": {**_env_pairs(args.conversation_env), **(conv_env or {})},
        "gateway": {
            **_env_pairs(args.gateway_env),
            **({"PYTHONPATH": str(Path(args.gateway_src).resolve())} if args.gateway_src else {}),
        },
    }
    workdir = RAW / f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{name}"
    with started_stack(
        workdir, gateways=gateways, conversation_replicas=replicas, extra_env=extra
    ) as system:
        logger.info("stack:\n%s", system.description)
        yield system


def run_under_pyinstrument(system: System, index: int, out: Path) -> None:
    """Restart one gateway of our stack under pyinstrument (same port and environment)."""
    assert system.stack is not None
    svc = system.stack.gateways[index]
    argv, env = pyinstrument_argv(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    svc.process.stop()
    svc.process.argv = argv
    svc.process.env = {**(svc.process.env or {}), **env}
    svc.process.start()
    system.stack.wait_ready(svc)
    proc = svc.process.proc
    system.gateways[index].pid = proc.pid if proc else None
    logger.info("gateway-%d restarted under pyinstrument -> %s", index + 1, out)


@contextlib.contextmanager
def mock_system(n: int) -> Iterator[System]:
    ensure_node_modules()
    procs = []
    try:
        gws = []
        for _ in range(n):
            proc = subprocess.Popen(
                ["node", str(LOADGEN_DIR / "mockgw.mjs"), "0"],
                stdout=subprocess.PIPE,
                cwd=LOADGEN_DIR,
            )
            procs.append(proc)
            assert proc.stdout is not None
            port = int(proc.stdout.readline())
            gws.append(Gateway(f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}", proc.pid))
        yield System(gws, description="mock Node gateways (generator self-check)")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=5)


def _src_commit(path: str) -> str:
    out = subprocess.run(
        ["git", "-C", path, "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return f"{path} @ {out.stdout.strip() or '?'}"


def run_scenario(name: str, args: argparse.Namespace) -> dict[str, Any]:
    q = args.quick
    dur = args.duration or (3.0 if q else 10.0)
    drain = 1.5 if q else 2.0
    log_dir = RAW / "loadgen"
    if name == "idle":
        stages = args.idle_stages or ([200, 500] if q else [10_000, 19_800])
        with system_for(args, name, gateways=1) as system:
            return scenarios.idle(
                system,
                stages=stages,
                members=20,
                hold_seconds=2.0 if q else 15.0,
                per_process=9_500,
                threads=args.threads,
                log_dir=log_dir,
                settle_seconds=2.0 if q else 5.0,
            )
    if name == "connects":
        with system_for(args, name, gateways=1) as system:
            return connects.connects(
                system,
                n=args.connections or (500 if q else 5_000),
                concurrency=args.connect_concurrency,
                repeat=args.repeat or (1 if q else 3),
                threads=args.threads,
                log_dir=log_dir,
                profile_dir=PROFILES if args.profile else None,
                client=args.connect_client,
            )
    if name == "storm":
        with system_for(args, name, gateways=3) as system:
            return connects.storm(
                system,
                n=args.connections or (400 if q else 10_000),
                members=20,
                concurrency=10_000,
                threads=args.threads,
                log_dir=log_dir,
                profile_dir=PROFILES if args.profile else None,
                client=args.connect_client,
            )
    if name in ("fanout", "selfcheck"):
        rates = args.fanout_rates or (
            [200.0, 1000.0] if q else [1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0]
        )
        if name == "selfcheck":
            rates = args.fanout_rates or (
                [2000.0, 6000.0] if q else [2000.0, 5000.0, 8000.0, 12000.0]
            )
        # The mock relays nothing between instances: its self-check uses one instance.
        cm = mock_system(1) if name == "selfcheck" else system_for(args, name, gateways=2)
        with cm as system:
            pyinst = None
            if args.pyinstrument and system.stack is not None:
                pyinst = PROFILES / f"pyinstrument-{name}-gateway-1.txt"
                run_under_pyinstrument(system, 0, pyinst)
            profile_rates = args.profile_rates or ([2000.0, rates[-1]] if args.profile else [])
            result = scenarios.fanout(
                system,
                gateways=[0] if name == "selfcheck" else [0, 1],
                rates=rates,
                n_convs=10,
                members=20,
                duration=dur,
                drain=drain,
                threads=args.threads,
                log_dir=log_dir,
                label=name,
                repeat=args.repeat or (1 if q or name == "selfcheck" else 3),
                profile_rates=profile_rates,
                profile_dir=PROFILES if profile_rates else None,
            )
        if pyinst is not None:  # written when the gateway stopped with the stack
            result["pyinstrument"] = pyinst.name
        return result
    if name == "groupcommit":
        rates = args.persist_rates or (
            [100.0, 300.0] if q else [100.0, 200.0, 400.0, 800.0, 1600.0]
        )
        runs = []
        for label, env in (("default", {}), ("max_batch_1", {GROUP_COMMIT_ENV: "1"})):
            with system_for(args, f"{name}-{label}", gateways=2, conv_env=env) as system:
                run = scenarios.persisted(
                    system,
                    gateways=[0, 1],
                    rates=rates,
                    n_convs=100,
                    members=3,
                    duration=dur,
                    drain=max(drain, 6.0),
                    threads=args.threads,
                    log_dir=log_dir,
                    label=f"gc-{label}",
                )
                run["groupCommit"] = label
                runs.append(run)
        return {"runs": runs}
    if name == "persisted":
        rates = args.persist_rates or (
            [100.0, 400.0] if q else [100.0, 250.0, 500.0, 1000.0, 2000.0, 3000.0]
        )
        replicas = sorted(args.replicas, reverse=True)
        persist_profile = args.profile_rates or ([rates[-1]] if args.profile else [])
        runs = []
        with system_for(args, name, gateways=2, replicas=max(replicas)) as system:
            for i, k in enumerate(replicas):
                if i > 0 and system.stack is not None:
                    for j in range(k, len(system.conversation_pids)):
                        system.stop_conversation_replica(j)
                    system.conversation_pids = system.conversation_pids[:k]
                    time.sleep(1.0)
                logger.info("persisted: %d conversation replica(s)", k)
                system.wait_partitions_settled()
                runs.append(
                    scenarios.persisted(
                        system,
                        gateways=[0, 1],
                        rates=rates,
                        n_convs=100,
                        members=3,
                        duration=dur,
                        drain=max(drain, 6.0),
                        threads=args.threads,
                        log_dir=log_dir,
                        label=f"persisted-r{k}",
                        profile_rates=persist_profile,
                        profile_dir=PROFILES if persist_profile else None,
                    )
                )
                if system.stack is None:
                    break
        return {"runs": sorted(runs, key=lambda r: r["conversationReplicas"])}
    if name == "scaleout":
        rates = args.scaleout_rates or (
            [1000.0, 2000.0] if q else [1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0]
        )
        runs = []
        with system_for(args, name, gateways=max(args.scaleout_gateways)) as system:
            for g in args.scaleout_gateways:
                if g > len(system.gateways):
                    continue
                logger.info("scaleout: %d gateway(s)", g)
                runs.append(
                    scenarios.fanout(
                        system,
                        gateways=list(range(g)),
                        rates=rates,
                        n_convs=10,
                        members=20,
                        duration=dur,
                        drain=drain,
                        threads=args.threads,
                        log_dir=log_dir,
                        label=f"scaleout-g{g}",
                    )
                )
        return {"runs": runs}
    raise ValueError(name)


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
