"""Latency probes. Each probe runs the artifact in a fresh process (honest load time
and peak RSS) through the same runtime Session and greedy loop as `run` and `verify`."""
