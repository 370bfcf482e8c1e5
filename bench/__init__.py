"""Benchmarks and the kube-proxy ruleset synthesizer they (and the sample dumps) are built from."""
