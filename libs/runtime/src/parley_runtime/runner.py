"""The process runner: every service's ``__main__`` is ``run(settings, serve, ...)``.

One shutdown rule for every service:

- SIGTERM or SIGINT sets the ``stop`` event that ``serve`` waits on; ``serve`` then drains
  (its own ``drain_seconds``) and returns, and the process exits 0.
- If it has not returned ``drain_seconds + SHUTDOWN_MARGIN_SECONDS`` after the signal, or a
  second signal arrives, the process exits 1 at once (the orchestrator would SIGKILL it
  anyway; this way the log says why).
- A configuration that must not run (``settings.check()`` raises ValueError) exits 2 with
  ``refusing to start: <reason>`` before anything starts; a startup that fails for good
  exits 3. Unreachable dependencies are not a failure: services wait for them (not ready).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

import uvicorn
import uvloop
from pydantic import ValidationError

from parley_runtime.logs import setup_logging
from parley_runtime.settings import ServiceSettings

logger = logging.getLogger(__name__)

SHUTDOWN_MARGIN_SECONDS = 10.0
EXIT_REFUSED = 2
EXIT_STARTUP_FAILED = 3
EXIT_FORCED = 1

Serve = Callable[[asyncio.Event], Awaitable[None]]
S = TypeVar("S", bound=ServiceSettings)


class StartupFailed(RuntimeError):
    """The service could not start for a reason waiting will not fix."""


def load_settings(cls: type[S]) -> S:
    """The service's settings from the environment; invalid ones exit 2 with the reasons."""
    try:
        return cls()
    except ValidationError as exc:
        logging.basicConfig(level=logging.INFO)
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        logger.error("refusing to start: invalid settings: %s", reasons)
        raise SystemExit(EXIT_REFUSED) from None


def run(
    settings: ServiceSettings,
    serve: Serve,
    *,
    drain_seconds: float,
    margin_seconds: float = SHUTDOWN_MARGIN_SECONDS,
) -> None:
    """Run ``serve(stop)`` on uvloop under the shutdown rule above; never returns."""
    setup_logging(settings)
    try:
        settings.check()
    except ValueError as exc:
        logger.error("refusing to start: %s", exc)
        raise SystemExit(EXIT_REFUSED) from None
    try:
        uvloop.run(_main(serve, drain_seconds + margin_seconds))
    except StartupFailed as exc:
        logger.error("startup failed: %s", exc)
        raise SystemExit(EXIT_STARTUP_FAILED) from None
    if _state.failure is not None:
        logger.error("startup failed: %r", _state.failure)
        raise SystemExit(EXIT_STARTUP_FAILED)
    raise SystemExit(0)


class _State:
    """The running process's stop event and a fatal startup failure, if any."""

    stop: asyncio.Event | None = None
    failure: BaseException | None = None


_state = _State()


def fail(exc: BaseException) -> None:
    """A startup failed for good (not a dependency to wait for: a bug, a bad file): stop
    the process, which then exits 3. Outside :func:`run` (tests) it is only logged."""
    logger.error("fatal: %r", exc, exc_info=exc)
    if _state.stop is not None:
        _state.failure = exc
        _state.stop.set()


@contextlib.asynccontextmanager
async def started_in_background(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> AsyncIterator[None]:
    """For an ASGI lifespan: the HTTP port opens at once (``/healthz`` answers, ``/readyz``
    says 503) while ``start()`` waits for NATS, JetStream, the store... in the background;
    at shutdown a start still running is cancelled, then ``stop()`` runs."""

    async def starting() -> None:
        try:
            await start()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            fail(exc)

    task = asyncio.create_task(starting(), name="service start")
    try:
        yield
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await stop()


async def _main(serve: Serve, limit: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    _state.stop = stop

    def on_signal(signum: int) -> None:
        if stop.is_set():
            logger.error("second signal %d: exiting now", signum)
            os._exit(EXIT_FORCED)
        logger.info("signal %d: shutting down (at most %.0fs)", signum, limit)
        stop.set()
        loop.call_later(limit, _too_slow, limit)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await serve(stop)
    logger.info("stopped")


def _too_slow(limit: float) -> None:
    logger.error("shutdown took longer than %.0fs: exiting now", limit)
    os._exit(EXIT_FORCED)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the runner owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@runtime_checkable
class HttpServiceSettings(Protocol):
    """What :func:`run_http` reads besides the shared fields (each service names its own
    environment variables for them)."""

    http_host: str
    http_port: int
    drain_seconds: float


def run_http(cls: type[S], create_app: Callable[[S], Any]) -> None:
    """A service's whole ``main``: its settings from the environment, then the ASGI app
    ``create_app(settings)`` on ``http_host:http_port`` under the shutdown rule above; the
    app's lifespan starts the service and drains it within ``drain_seconds``. Never returns."""
    settings = load_settings(cls)
    if not isinstance(settings, HttpServiceSettings):
        raise TypeError(f"{cls.__name__} lacks http_host, http_port or drain_seconds")
    host, port = settings.http_host, settings.http_port

    async def serve(stop: asyncio.Event) -> None:
        app = create_app(settings)
        await serve_asgi(app, host=host, port=port, stop=stop, settings=settings)

    run(settings, serve, drain_seconds=settings.drain_seconds)


async def serve_asgi(
    app: Any, *, host: str, port: int, stop: asyncio.Event, settings: ServiceSettings
) -> None:
    """Serve an ASGI app (its lifespan starts and stops the service) until ``stop``."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,  # the runner's logging (setup_logging), not uvicorn's
    )
    server = _Server(config)
    serving = asyncio.create_task(server.serve())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await serving
    finally:
        stopping.cancel()
    if not server.started:
        raise StartupFailed(f"the HTTP server on {host}:{port} did not start (see above)")
