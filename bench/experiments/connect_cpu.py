"""A gateway's CPU per connect, two gateway sources side by side (issue 16, connects).

One stack (NATS, one conversation replica), two gateways on it: gateway-1 runs this
checkout's gateway, gateway-2 the gateway source given with ``--before`` (a worktree's
``services/gateway/src``, put first on its ``PYTHONPATH``). Rounds alternate between them:
N distinct users connect (the raw handshake of the ``connects`` scenario) to one gateway,
then close; the gateway's CPU time (``/proc`` utime + stime) before and after gives its CPU
per connect, steadier than a wall-clock rate on a loaded machine. Prints each round and the
medians::

    uv run python -m bench.experiments.connect_cpu --before /path/to/main/services/gateway/src \
        --connections 4000 --rounds 5
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from pathlib import Path

from bench.connects import tree_cpu_seconds
from bench.generator import GeneratorPool
from bench.profiling import PySpy, summarize_collapsed
from bench.runs import RAW
from bench.scenarios import population
from bench.system import raise_nofile, started_stack

logger = logging.getLogger(__name__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="gateway source for gateway-2")
    parser.add_argument("--after", help="gateway source for gateway-1 (default: this checkout)")
    parser.add_argument("--connections", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=4, help="rounds per gateway")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="py-spy the first round")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    raise_nofile()
    workdir = RAW / f"{time.strftime('%Y%m%dT%H%M%S')}-connect-cpu"
    with started_stack(workdir, gateways=2, conversation_replicas=1) as system:
        assert system.stack is not None
        for index, src in ((1, args.before), (0, args.after)):
            if src is None:
                continue
            svc = system.stack.gateways[index]
            env = dict(svc.process.env or os.environ)
            env["PYTHONPATH"] = str(Path(src).resolve()) + os.pathsep + env.get("PYTHONPATH", "")
            svc.process.env = env
            system.stack.restart(svc)
            proc = svc.process.proc
            system.gateways[index].pid = proc.pid if proc else None
        names = ("after", "before")
        per: dict[str, list[float]] = {name: [] for name in names}
        rates: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.rounds):
            order = (0, 1) if r % 2 == 0 else (1, 0)
            for gw in order:
                pid = system.gateways[gw].pid
                assert pid is not None
                pop = population(
                    system, f"cpu{r}-{gw}-{int(time.time())}", args.connections, 1, [gw]
                )
                pool = GeneratorPool(
                    pop.clients, threads=args.threads, per_process=50_000, log_dir=workdir
                )
                try:
                    time.sleep(1.0)
                    spy = None
                    if args.profile and r == 0:
                        spy = PySpy(pid, workdir / f"{names[gw]}.txt", 3.0, rate=500)
                    cpu0 = tree_cpu_seconds(pid)
                    res = pool.connect(concurrency=args.concurrency, raw=True)
                    cpu = tree_cpu_seconds(pid) - cpu0
                finally:
                    pool.close()
                if spy is not None:
                    spy.wait()
                    summary = summarize_collapsed(spy.out, spy.duration, spy.rate, top=45)
                    for kind in ("self", "inclusive"):
                        for row in summary.get(kind, []):
                            logger.info("  %s %5.1f %% %s", kind, row["percent"], row["frame"])
                ms = 1000 * cpu / max(1, res["ok"])
                per[names[gw]].append(ms)
                rates[names[gw]].append(res["perSecond"])
                load = os.getloadavg()[0]
                logger.info(
                    "round %d %s: %d ok, %d failed, %.0f/s, gateway CPU %.3f ms/connect, load %.2f",
                    r,
                    names[gw],
                    res["ok"],
                    res["failed"],
                    res["perSecond"],
                    ms,
                    load,
                )
                time.sleep(2.0)  # the closed round's cleanup
        for name in names:
            logger.info(
                "%s: median %.3f ms/connect (%s), median %.0f connects/s",
                name,
                statistics.median(per[name]),
                " ".join(f"{v:.3f}" for v in per[name]),
                statistics.median(rates[name]),
            )


if __name__ == "__main__":
    main()
