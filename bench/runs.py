"""The benchmark scenarios as ``python -m bench`` runs them (``run_scenario``): each one's
sizes (full or ``--quick``), the system it runs against (a stack started here, gateways
already running, or the generator's mock gateways) and the profilers asked for."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import connects, scenarios
from bench.generator import LOADGEN_DIR, ensure_node_modules
from bench.profiling import pyinstrument_argv
from bench.system import Gateway, System, external_system, started_stack

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results"
RAW = RESULTS / "raw"
PROFILES = RESULTS / "profiles"
# The conversation service's group commit: most writes of one conversation per batch.
GROUP_COMMIT_ENV = "PARLEY_CONVERSATION_MAX_BATCH"


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


def run_scenario(name: str, args: argparse.Namespace) -> dict[str, Any]:
    q = args.quick
    dur = args.duration or (3.0 if q else 10.0)
    drain = 1.5 if q else 2.0
    log_dir = RAW / "loadgen"
    # fanout's, selfcheck's and scaleout's runs: typing:start in 10 conversations of 20.
    fanout_run = functools.partial(
        scenarios.fanout,
        n_convs=10,
        members=20,
        duration=dur,
        drain=drain,
        threads=args.threads,
        log_dir=log_dir,
    )
    # groupcommit's and persisted's runs: message:send to 100 conversations of 3 members.
    persisted_run = functools.partial(
        scenarios.persisted,
        gateways=[0, 1],
        n_convs=100,
        members=3,
        duration=dur,
        drain=max(drain, 6.0),
        threads=args.threads,
        log_dir=log_dir,
    )
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
            result = fanout_run(
                system,
                gateways=[0] if name == "selfcheck" else [0, 1],
                rates=rates,
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
                run = persisted_run(system, rates=rates, label=f"gc-{label}")
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
                    persisted_run(
                        system,
                        rates=rates,
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
                    fanout_run(system, gateways=list(range(g)), rates=rates, label=f"scaleout-g{g}")
                )
        return {"runs": runs}
    raise ValueError(name)
