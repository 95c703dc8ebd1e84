"""The attention_kernel pass says once, in one line, which attention kernels it found, and how to install a missing
one made for the GPU at hand."""

from __future__ import annotations

import logging

import torch

from nexfort.passes.attention_kernel import AttentionKernel, register_kernel
from nexfort.passes.attention_kernel import kernels as K


def _kernel(name, available, suits=True):
    return AttentionKernel(name, lambda q, k, v, s: None, lambda q, k, v: True, lambda device_type: available,
                           install=f"pip install {name}-pkg", suits=(lambda device: suits),
                           describe=lambda: f"{name} (v1)")


def test_report_names_found_and_missing_kernels():
    cpu = torch.device("cpu")
    unregister = [register_kernel(_kernel("fastk", True)), register_kernel(_kernel("absentk", False)),
                  register_kernel(_kernel("otherhw", False, suits=False))]
    try:
        line = K.kernel_report(cpu)
        assert line.startswith("nexfort: attention kernels on cpu: SDPA, fastk (v1);"), line
        assert "absentk is made for this GPU and not installed: pip install absentk-pkg" in line
        assert "otherhw" not in line  # not made for this hardware: nothing to suggest
        assert "\n" not in line
    finally:
        for u in unregister:
            u()
    line = K.kernel_report(cpu)
    assert line == "nexfort: attention kernels on cpu: SDPA", line  # fa4 neither suits nor runs on a CPU


def test_report_is_logged_once(caplog):
    unregister = register_kernel(_kernel("fastk2", True))
    try:
        with caplog.at_level(logging.WARNING, logger="nexfort"):
            first = K.report_kernels(torch.device("cpu"))
            again = K.report_kernels(torch.device("cpu"))
        assert first and "fastk2 (v1)" in first and again is None
        assert [r.getMessage() for r in caplog.records].count(first) == 1
    finally:
        unregister()
