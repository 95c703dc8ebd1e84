"""Regional compilation (``options.diffusers.regional``): the denoiser's repeated blocks share compiled graphs."""

from __future__ import annotations

import logging

import pytest
import torch
from tiny_pixart import pipe_inputs, tiny_pixart_pipe

from nexfort.diffusers import compile_module, compile_pipe, resolve_pipe_config, uncompile_pipe
from nexfort.diffusers.regional import blocks_share_graphs, repeated_blocks

pytest.importorskip("diffusers")
pytestmark = pytest.mark.skipif(not callable(getattr(torch.nn.Module, "compile", None)) or not blocks_share_graphs(),
                                reason="regional compilation needs nn.Module.compile and blocks sharing a compiled "
                                       "graph (torch._dynamo.config.inline_inbuilt_nn_modules: torch 2.5+)")
REGIONAL = {"diffusers.regional": True}


def _compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def test_repeated_blocks_of_a_transformer():
    pipe = tiny_pixart_pipe(num_layers=3)
    names = [n for n, _ in repeated_blocks(pipe.transformer)]
    assert names == ["transformer_blocks.0", "transformer_blocks.1", "transformer_blocks.2"]
    # one block is not "repeated"; lists of mixed classes are looked into, not taken
    assert repeated_blocks(tiny_pixart_pipe(num_layers=1).transformer) == []
    mixed = torch.nn.Module()
    mixed.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.ReLU(), torch.nn.ReLU())])
    assert [n for n, _ in repeated_blocks(mixed)] == []
    mixed.blocks[1] = torch.nn.Sequential(torch.nn.ModuleList([torch.nn.ReLU(), torch.nn.ReLU()]))
    assert [n for n, _ in repeated_blocks(mixed)] == ["blocks.1.0.0", "blocks.1.0.1"]


def test_declared_repeated_blocks_win():
    class Block(torch.nn.Linear):
        pass

    class Model(torch.nn.Module):
        _repeated_blocks = ["Block"]

        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Sequential(Block(4, 4), torch.nn.ReLU(), Block(4, 4))
            self.others = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])

    assert [n for n, _ in repeated_blocks(Model())] == ["inner.0", "inner.2"]


def test_regional_pipe_matches_eager_with_one_graph_for_all_blocks(counters, assert_close):
    pipe, eager = tiny_pixart_pipe(num_layers=3), tiny_pixart_pipe(num_layers=3)
    with torch.inference_mode():
        compile_pipe(pipe, mode="max-optimize", options=REGIONAL, ignores=["vae"])
        blocks = pipe.transformer.transformer_blocks
        assert all(_compiled(b) for b in blocks) and _compiled(pipe.transformer)
        assert not _compiled(pipe.transformer.proj_out)
        kw = pipe_inputs(seed=1)
        assert_close(pipe(**kw).images, eager(**kw).images, tol=1e-4)
        graphs = counters["backend"]["graphs"]
        # three blocks, two graphs: the first block's input (PatchEmbed's transposed view) has other strides than
        # the blocks' outputs (contiguous), which the others get; the count does not grow with the blocks
        assert graphs == 2, graphs
        assert counters["backend"]["fallbacks"] == 0
        # in-place weight changes of one block reach it without recompiling
        for p in (pipe, eager):
            p.transformer.transformer_blocks[1].ff.net[2].weight.mul_(1.5)
        kw = pipe_inputs(seed=2)
        assert_close(pipe(**kw).images, eager(**kw).images, tol=1e-4)
        assert counters["backend"]["graphs"] == graphs
    uncompile_pipe(pipe)
    assert not _compiled(pipe.transformer) and not any(_compiled(b) for b in blocks)


def test_regional_dynamic_resolutions(counters, assert_close):
    pipe, eager = tiny_pixart_pipe(num_layers=3), tiny_pixart_pipe(num_layers=3)
    with torch.inference_mode():
        compile_pipe(pipe, mode="jit", options=REGIONAL, dynamic=True, ignores=["vae"])
        for size in (64, 96):
            kw = pipe_inputs(seed=3, size=size)
            assert_close(pipe(**kw).images, eager(**kw).images, tol=1e-4)
        # first block and the others (strides, see above), each for both resolutions
        assert counters["backend"]["graphs"] == 2


def test_a_model_without_repeated_blocks_is_compiled_whole(caplog):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU())
    cfg = resolve_pipe_config("jit", REGIONAL)
    with caplog.at_level(logging.WARNING, logger="nexfort"):
        compile_module(model, cfg, regions=True)
    assert _compiled(model) and "no repeated blocks" in caplog.text
    x = torch.randn(2, 4)
    torch.testing.assert_close(model(x), torch.nn.functional.gelu(model[0](x)))


def test_regional_is_on_with_jit_unless_switched_off():
    from nexfort.diffusers.pipe import regional

    assert resolve_pipe_config("jit").options.diffusers.regional is None
    assert regional(resolve_pipe_config("jit")) and not regional(resolve_pipe_config("max-optimize"))
    assert regional(resolve_pipe_config("max-optimize", REGIONAL))
    assert not regional(resolve_pipe_config("jit", {"diffusers.regional": False}))
    pipe = tiny_pixart_pipe(num_layers=2)
    compile_pipe(pipe, mode="jit", ignores=["vae"])
    assert all(_compiled(b) for b in pipe.transformer.transformer_blocks)
    pipe = tiny_pixart_pipe(num_layers=2)
    compile_pipe(pipe, mode="jit", options={"diffusers.regional": False}, ignores=["vae"])
    assert not any(_compiled(b) for b in pipe.transformer.transformer_blocks) and _compiled(pipe.transformer)
