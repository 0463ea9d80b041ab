"""Benchmarks: `escalon bench` (gRPC floor, routing decision, cascade overhead) and `escalon bench distill`."""
