"""Fixtures of the pass tests."""

from __future__ import annotations

import pytest

from nexfort.core import compat


@pytest.fixture
def captured(monkeypatch):
    """Graphs the nexfort backend hands to Inductor (after its pre_grad passes); Inductor still runs."""
    graphs = []
    real = compat.compile_fx

    def recording(gm, *args, **kwargs):
        graphs.append(gm)
        return real(gm, *args, **kwargs)

    monkeypatch.setattr(compat, "compile_fx", recording)
    return graphs
