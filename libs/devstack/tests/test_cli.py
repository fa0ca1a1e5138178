"""The `parley` CLI: tokens, and `parley run` (what `make run` starts) up and down."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from parley_contract.auth import JwtConfig, mint_token, verify_token
from parley_contract.events import PrincipalKind
from parley_devstack.cli import main
from parley_devstack.idp import rs256_key_pair
from parley_devstack.servers import NatsServer, StoreServer, free_port
from parley_devstack.stack import REPO_ROOT, http_ok


def test_token_is_a_valid_development_jwt(capsys: object) -> None:
    assert main(["token", "--sub", "user-456", "--kind", "agent", "--name", "Ada"]) == 0
    token = capsys.readouterr().out.strip()  # type: ignore[attr-defined]
    principal, _ = verify_token(token, JwtConfig())
    assert (principal.id, principal.kind, principal.name) == (
        "user-456",
        PrincipalKind.AGENT,
        "Ada",
    )


def test_make_token_works_without_uv_on_path() -> None:
    """README: `make -s token ...` right after `make setup`, though `make setup` put uv in
    ~/.local/bin, which is often not on PATH."""
    local_bin = str(Path.home() / ".local" / "bin")
    path = ":".join(d for d in os.environ.get("PATH", "").split(":") if d and d != local_bin)
    out = subprocess.run(
        ["make", "-s", "token", "SUB=agent-ext", "KIND=agent", "NAME=Ext Agent"],
        cwd=REPO_ROOT,
        env={**os.environ, "PATH": path or "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    principal, _ = verify_token(out.strip(), JwtConfig())
    assert (principal.id, principal.kind, principal.name) == (
        "agent-ext",
        PrincipalKind.AGENT,
        "Ext Agent",
    )


def test_run_starts_everything_and_ctrl_c_stops_it(
    nats_server: NatsServer, store_server: StoreServer, tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    env = {
        **os.environ,
        "NATS_URL": nats_server.url,
        "MONGODB_URL": store_server.url,
        "MONGODB_DATABASE": f"parley_cli_{ports[0]}",
        "PARLEY_RUN_GATEWAY_PORTS": ",".join(map(str, ports)),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "parley_devstack.cli", "run", "--data-dir", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not all(http_ok(f"http://127.0.0.1:{p}/readyz") for p in ports):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "parley run did not bring both gateways up"
            time.sleep(0.2)
        request = urllib.request.Request(
            f"http://127.0.0.1:{ports[1]}/v1/scaling",
            headers={"Authorization": f"Bearer {mint_token('user-1')}"},
        )
        # Gateways and the bridge announce themselves in JetStream KV right after start.
        scaling: dict[str, int] = {}
        while time.monotonic() < deadline:
            with urllib.request.urlopen(request) as response:
                scaling = json.load(response)["data"]
            if scaling["instances"] == 2 and scaling["agents"] >= 1:
                break
            time.sleep(0.5)
        assert scaling["instances"] == 2, scaling
        assert scaling["agents"] >= 1, scaling  # the offline demo agent
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "Parley is running." in out and f"http://127.0.0.1:{ports[0]}/" in out
    # First five minutes: which agent to talk to, two things to try, links that sign in.
    assert "agent:       agent-demo" in out and "Two things to try:" in out
    assert "search the weather in Hanoi and calc 12*7" in out
    links = dict(re.findall(r"(http://127\.0\.0\.1:\d+)/#token=(\S+)", out))
    assert set(links) == {f"http://127.0.0.1:{p}" for p in ports}, out
    signed_in = [verify_token(tok, JwtConfig())[0].id for tok in links.values()]
    assert sorted(signed_in) == ["user-1", "user-2"]
    assert not any(http_ok(f"http://127.0.0.1:{p}/healthz") for p in ports)


def test_token_with_a_private_key_is_rs256(capsys: object, tmp_path: Path) -> None:
    """What a production deployment verifies (HS256 is development only)."""
    private, public = rs256_key_pair()
    key = tmp_path / "jwt.key"
    key.write_text(private)
    assert main(["token", "--sub", "user-9", "--private-key", str(key)]) == 0
    token = capsys.readouterr().out.strip()  # type: ignore[attr-defined]
    principal, _ = verify_token(token, JwtConfig(algorithm="RS256", public_key=public))
    assert principal.id == "user-9"
