"""The ``parley`` command: ``parley run`` (what ``make run`` starts) and ``parley token``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from urllib.parse import urlparse

from parley_contract import nats_auth
from parley_contract.auth import DEV_JWT_SECRET, mint_token
from parley_contract.events import PrincipalKind
from parley_devstack.servers import NatsServer, StoreServer, free_port, port_open
from parley_devstack.stack import REPO_ROOT, Stack, StackConfig

logger = logging.getLogger("parley")

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def _nats_answers(url: str) -> bool:
    parsed = urlparse(url)
    return port_open(parsed.hostname or "127.0.0.1", parsed.port or 4222, timeout=0.5)


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


DEMO_AGENT = "agent-demo"


def welcome(stack: Stack, secret: str, agent: str = DEMO_AGENT) -> str:
    """What `make run` prints once everything is ready: where to go, as whom, with which
    agent, and two things to try (README, "First five minutes")."""
    one = mint_token("user-1", PrincipalKind.USER, name="User One", secret=secret)
    two = mint_token("user-2", PrincipalKind.USER, name="User Two", secret=secret)
    first = stack.gateway_url(0)
    other = stack.gateway_url(len(stack.gateways) - 1)
    pages = ", ".join(f"{stack.gateway_url(i)}/" for i in range(len(stack.gateways)))
    return "\n".join(
        [
            "",
            "Parley is running.",
            stack.describe(),
            "",
            f"chat page:   {pages} (any gateway, same system)",
            f"sign in:     {first}/#token={one}",
            "             (user-1; or 'Dev sign-in' on the page, or make -s token SUB=<id>)",
            f"agent:       {agent}, the offline demo agent (no API key): the page's default",
            "             'Agent id' for a new conversation",
            f"WebSocket:   {stack.ws_url(0)}?access_token=<jwt>   (docs/protocol.md)",
            f"HTTP API:    {first}/docs",
            "",
            "Two things to try:",
            f"  1. Create a conversation with {agent} and write",
            '     "search the weather in Hanoi and calc 12*7": it thinks, calls two MCP tools',
            '     at once, and streams its answer (write "something slow" and press Stop, too).',
            "  2. Invite user-2 when you create it, and open, in another window, another gateway",
            f"     as user-2: {other}/#token={two}",
            "     Write from both: each message reaches the other page live, across gateways.",
            "",
            f"A token for user-1 (24 h):\n{one}",
        ]
    )


def cmd_token(args: argparse.Namespace) -> int:
    secret = os.environ.get("PARLEY_JWT_SECRET", DEV_JWT_SECRET)
    private_key = Path(args.private_key).read_text() if args.private_key else None
    token = mint_token(
        args.sub,
        PrincipalKind(args.kind),
        name=args.name,
        ttl_seconds=args.ttl,
        secret=secret,
        private_key=private_key,
        algorithm="RS256" if private_key else "HS256",
    )
    _write(token)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    var = Path(args.data_dir).resolve()
    var.mkdir(parents=True, exist_ok=True)
    nats_url = os.environ.get("NATS_URL", DEFAULT_NATS_URL)
    own_nats: NatsServer | None = None
    if _nats_answers(nats_url):
        logger.info("using the NATS server that answers at %s", nats_url)
    else:
        wanted = urlparse(nats_url).port or 4222
        port = wanted if not port_open("127.0.0.1", wanted) else free_port()
        logger.info("no NATS at %s: starting nats-server with JetStream on port %d", nats_url, port)
        # One NATS user per service role (parley_contract.nats_auth): development runs with
        # the permissions production has.
        own_nats = NatsServer(var / "nats", port=port, auth=True).start()
        nats_url = own_nats.url
    mongodb_url = os.environ.get("MONGODB_URL", "")
    own_store: StoreServer | None = None
    if not mongodb_url:
        port = 27017 if not port_open("127.0.0.1", 27017) else free_port()
        logger.info("MONGODB_URL not set: starting the embedded store (SecantusDB) on %d", port)
        own_store = StoreServer(var / "store", port=port).start()
        mongodb_url = own_store.url
    ports = [int(p) for p in args.gateway_ports.split(",") if p.strip()]
    web_dist = REPO_ROOT / "web" / "dist"
    service_env: dict[str, dict[str, str]] = {}
    if web_dist.is_dir():
        service_env["gateway"] = {"PARLEY_GATEWAY_WEB_DIST": str(web_dist)}
    if own_nats is not None:
        for role in nats_auth.ROLES:
            service_env.setdefault(role, {})["NATS_URL"] = own_nats.url_for(role)
    config = StackConfig(
        workdir=var,
        nats_url=nats_url,
        mongodb_url=mongodb_url,
        database=os.environ.get("MONGODB_DATABASE", "parley"),
        gateway_ports=ports,
        conversation_replicas=args.conversation_replicas,
        agent_bridges=args.agent_bridges,
        host=args.host,
        environment=os.environ.get("PARLEY_ENVIRONMENT", "development"),
        jwt_secret=os.environ.get("PARLEY_JWT_SECRET", DEV_JWT_SECRET),
        service_env=service_env,
    )
    stack = Stack(config)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        # A process that dies is restarted (capped exponential backoff, logged), as compose
        # and Kubernetes would; the stack as a whole stops only on Ctrl-C / SIGTERM.
        supervisor = stack.supervise()
        for server in (own_nats, own_store):
            if server is not None and server.process is not None:
                supervisor.watch(server.process)
        _write(welcome(stack, config.jwt_secret))
        _write(
            f"\nlogs: {var / 'logs'}\n\nA process that dies is restarted (see the log above)."
            "\nCtrl-C stops everything."
        )
        while not stop.wait(1.0):
            pass
    finally:
        _write("stopping...")
        stack.stop()
        if own_nats:
            own_nats.stop()
        if own_store:
            own_store.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("PARLEY_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    parser = argparse.ArgumentParser(prog="parley", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    token = sub.add_parser("token", help="mint a development JWT")
    token.add_argument("--sub", required=True, help="principal id, e.g. user-456")
    token.add_argument("--kind", choices=["user", "agent"], default="user")
    token.add_argument("--name", default=None, help="display name")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds")
    token.add_argument(
        "--private-key",
        default=None,
        help="PEM file of an RSA private key: an RS256 token (production gateways verify it "
        "with PARLEY_JWT_PUBLIC_KEY); default: HS256 with PARLEY_JWT_SECRET (development)",
    )
    token.set_defaults(func=cmd_token)

    run = sub.add_parser("run", help="start the whole system locally")
    run.add_argument(
        "--gateway-ports",
        default=os.environ.get("PARLEY_RUN_GATEWAY_PORTS", "8001,8002"),
        help="comma-separated ports, one gateway each (env PARLEY_RUN_GATEWAY_PORTS)",
    )
    run.add_argument("--host", default=os.environ.get("PARLEY_RUN_HOST", "127.0.0.1"))
    run.add_argument("--conversation-replicas", type=int, default=1)
    run.add_argument("--agent-bridges", type=int, default=1)
    run.add_argument("--data-dir", default=str(REPO_ROOT / "var"))
    run.set_defaults(func=cmd_run)

    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
