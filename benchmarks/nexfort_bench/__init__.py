"""Shared pieces of nexfort's diffusion benchmarks: models, inputs, timing, reporting and the command line."""
