"""TLS to NATS (issue 18): a real nats-server that requires TLS and verifies client
certificates (mutual TLS), with a throwaway CA made by the test (parley_devstack.tlscerts).
The runtime's settings (NATS_CA, NATS_CERT, NATS_KEY) connect; without the client
certificate or without the CA the connection is refused; the three services run over it."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from parley_conversation.settings import Settings as ConversationSettings
from parley_devstack.servers import NatsServer, StoreServer, free_port
from parley_devstack.stack import Stack, StackConfig
from parley_devstack.tlscerts import TestCA
from parley_runtime import bus
from parley_runtime.settings import ServiceSettings

pytestmark = pytest.mark.timeout(180)


class Probe(ServiceSettings):
    instance_prefix = "probe"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_nats(ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server_cert = ca.issue("nats", hosts=("127.0.0.1", "localhost"))
    tls = (
        "tls {\n"
        f'  cert_file: "{server_cert.cert}"\n'
        f'  key_file: "{server_cert.key}"\n'
        f'  ca_file: "{ca.cert}"\n'
        "  verify: true\n"
        "  timeout: 2\n"
        "}\n"
    )
    server = NatsServer(tmp_path_factory.mktemp("tls-nats"), extra_config=tls).start()
    try:
        yield server
    finally:
        server.stop()


def _settings(server: NatsServer, **tls: str) -> Probe:
    return Probe(nats_url=server.url, **tls)  # type: ignore[arg-type]


async def test_mutual_tls_connects_with_the_settings(ca: TestCA, tls_nats: NatsServer) -> None:
    client = ca.issue("gateway", client=True)
    settings = _settings(
        tls_nats, nats_ca=str(ca.cert), nats_cert=str(client.cert), nats_key=str(client.key)
    )
    settings.check()
    nc = await bus.connect(settings, "gateway")
    try:
        sub = await nc.subscribe("tls.probe")
        await nc.publish("tls.probe", b"over tls")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"over tls"
        assert nc.connected_url is not None
        info = await nc.jetstream().account_info()  # JetStream over the same TLS connection
        assert info is not None
    finally:
        await nc.close()


@pytest.mark.parametrize("missing", ["client certificate", "CA"])
async def test_without_the_client_certificate_or_the_ca_it_is_refused(
    ca: TestCA, tls_nats: NatsServer, missing: str
) -> None:
    client = ca.issue("anon", client=True)
    if missing == "CA":  # the system's CAs do not know the test CA
        settings = _settings(tls_nats, nats_cert=str(client.cert), nats_key=str(client.key))
    else:
        settings = _settings(tls_nats, nats_ca=str(ca.cert))
    options = bus.connect_options(settings, "gateway")
    options.update(max_reconnect_attempts=0, allow_reconnect=False, connect_timeout=2)
    with pytest.raises((nats.errors.Error, OSError)):
        nc = await nats.connect(**options)
        await nc.close()


def test_bad_tls_files_refuse_to_start(ca: TestCA, tls_nats: NatsServer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NATS_CA: no such file"):
        _settings(tls_nats, nats_ca=str(tmp_path / "nope.pem")).check()
    client = ca.issue("half", client=True)
    with pytest.raises(ValueError, match="NATS_KEY is set without NATS_CERT"):
        _settings(tls_nats, nats_ca=str(ca.cert), nats_key=str(client.key)).check()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ValueError, match="NATS TLS files"):
        _settings(tls_nats, nats_ca=str(garbage)).check()


def test_the_services_run_over_mutual_tls(
    ca: TestCA, tls_nats: NatsServer, mongo_tls: TlsProxy, db_name: str, tmp_path: Path
) -> None:
    """Gateway, conversation service and agent bridge as processes, each with its own
    client certificate to NATS (and to MongoDB for those that open it): all become ready
    (they declare buckets and the stream over TLS, the conversation service opens the
    store through the TLS endpoint, which requires a client certificate)."""
    service_env = {}
    for role in ("gateway", "conversation", "agent-bridge"):
        cert = ca.issue(role, client=True)
        service_env[role] = {
            "NATS_CA": str(ca.cert),
            "NATS_CERT": str(cert.cert),
            "NATS_KEY": str(cert.key),
            "MONGODB_TLS_CA_FILE": str(ca.cert),
            "MONGODB_TLS_CERT_KEY_FILE": str(cert.combined),
        }
    service_env["agent-bridge"]["PARLEY_AGENT_BRIDGE_TOOLS_WAIT"] = "0"
    config = StackConfig(
        workdir=tmp_path / "stack",
        nats_url=tls_nats.url,
        mongodb_url=mongo_tls.url,
        database=db_name,
        gateway_ports=[free_port()],
        service_env=service_env,
    )
    with Stack(config) as stack:
        assert all(svc.process.running for svc in stack.services)


# ---------------------------------------------------------------- MongoDB over TLS


class TlsProxy:
    """A TLS endpoint in front of the embedded store (which speaks plain TCP only): verifies
    the client's certificate against the CA, then relays bytes. Runs on its own loop/thread
    so blocking tests (a Stack) can use it too."""

    def __init__(self, ca: TestCA, upstream_port: int) -> None:
        cert = ca.issue("mongodb", hosts=("127.0.0.1", "localhost"))
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.cert))
        self.context.load_cert_chain(str(cert.cert), str(cert.key))
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.upstream_port = upstream_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def __enter__(self) -> TlsProxy:
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._relay, "127.0.0.1", self.port, ssl=self.context),
            self.loop,
        )
        self.server = started.result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"


@pytest.fixture(scope="module")
def mongo_tls(ca: TestCA, store_server: StoreServer) -> Iterator[TlsProxy]:
    with TlsProxy(ca, store_server.port) as proxy:
        yield proxy


async def test_mongodb_over_tls_with_the_settings(ca: TestCA, mongo_tls: TlsProxy) -> None:
    client_cert = ca.issue("conversation-mongo", client=True)
    settings = ConversationSettings(
        mongodb_url=mongo_tls.url,
        mongodb_tls_ca_file=str(ca.cert),
        mongodb_tls_cert_key_file=str(client_cert.combined),
    )
    settings.check()
    assert settings.mongo_options()["tls"] is True
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        settings.mongodb_url, serverSelectionTimeoutMS=5000, **settings.mongo_options()
    )
    try:
        assert (await client.admin.command("ping"))["ok"] == 1
    finally:
        await client.close()

    # Without the client certificate the TLS endpoint refuses the connection.
    anonymous = ConversationSettings(mongodb_url=mongo_tls.url, mongodb_tls_ca_file=str(ca.cert))
    client = AsyncMongoClient(
        anonymous.mongodb_url, serverSelectionTimeoutMS=1500, **anonymous.mongo_options()
    )
    try:
        with pytest.raises(PyMongoError):
            await client.admin.command("ping")
    finally:
        await client.close()


def test_bad_mongodb_tls_settings_refuse_to_start(ca: TestCA, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MONGODB_TLS_CA_FILE: no such file"):
        ConversationSettings(mongodb_tls_ca_file=str(tmp_path / "nope.pem")).check()
    with pytest.raises(ValueError, match="MONGODB_TLS is false"):
        ConversationSettings(mongodb_tls=False, mongodb_tls_ca_file=str(ca.cert)).check()
