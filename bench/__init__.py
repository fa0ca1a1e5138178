"""Parley's benchmark suite (issue 6): ``python -m bench`` (``make bench``).

A Node ``ws`` load generator (``bench/loadgen/``) speaks the client protocol; this package
starts the system (``parley_devstack.stack.Stack``) or targets running gateways, drives the
generator through the scenarios (idle, fanout, persisted, scaleout), samples the gateways'
RSS and writes JSON results, a Markdown table and a latency plot to ``bench/results/``.
"""
