"""py-spy's command line as the benches build it."""

from __future__ import annotations

from pathlib import Path

from bench.profiling import py_spy_argv


def test_gil_only_samples_when_asked() -> None:
    out = Path("/tmp/x.txt")
    plain = py_spy_argv("py-spy", 42, out, 10.5, fmt="raw", rate=200, gil=False)
    gil = py_spy_argv("py-spy", 42, out, 10.5, fmt="raw", rate=200, gil=True)
    assert plain[:6] == ["py-spy", "record", "--pid", "42", "--duration", "10"]
    assert plain[-2:] == gil[-2:] == ["-o", "/tmp/x.txt"]
    assert "--gil" in gil and "--gil" not in plain
    assert "--nonblocking" in plain and "--nonblocking" in gil
    assert set(gil) - set(plain) == {"--gil"}
