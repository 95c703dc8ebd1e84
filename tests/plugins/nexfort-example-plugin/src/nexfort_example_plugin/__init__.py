"""Example third-party nexfort plugin: a post-grad pass that rewrites ``relu(x)`` into ``clamp_min(x, floor)``.

With ``options={"example.relu_floor": 0.0}`` the rewrite keeps the model's numerics (relu == clamp_min(x, 0));
any other floor visibly changes the compiled graph's output, which is how the tests prove that a plugin
installed only through its entry point reaches the compiled code, and that a change of its options is a cache
miss in Inductor (never stale code). Off unless ``example.relu_floor`` is set.

It also brings a mode flag of its own, ``relu-floor`` (``mode="jit:relu-floor"``): it sets
``example.relu_floor`` to 0.0 (an explicit ``example.relu_floor`` still wins, as a user's options do over flags),
and its switch ``config.flags.relu_floor`` is there for any plugin to read. Like every plugin, it imports nothing
of nexfort-core but :mod:`nexfort.core.api`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from nexfort.core.api import GraphPass, ModeFlag, hookimpl, options_of


@dataclass
class ExampleOptions:
    relu_floor: Optional[float] = None  # None: the pass is off


class ReluFloorPass(GraphPass):
    name = "example_relu_floor"
    stage = "post_grad"

    def apply(self, graph: torch.fx.Graph) -> int:
        floor = float(self.options.relu_floor)
        n = 0
        for node in list(graph.nodes):
            if node.op == "call_function" and node.target is torch.ops.aten.relu.default:
                with graph.inserting_before(node):
                    new = graph.call_function(torch.ops.aten.clamp_min.default, (node.args[0], floor))
                new.meta.update(node.meta)
                node.replace_all_uses_with(new)
                graph.erase_node(node)
                n += 1
        return n


@hookimpl
def nexfort_config_schema():
    return {"example": ExampleOptions}


RELU_FLOOR = ModeFlag(
    name="relu-floor",
    description="relu-floor: rewrite relu(x) into clamp_min(x, floor) after autograd (the example plugin's pass; "
                "the floor is options example.relu_floor, 0.0 unless given: numerics kept).",
    values={"options": {"example": {"relu_floor": 0.0}}},
)


@hookimpl
def nexfort_mode_flags():
    return [RELU_FLOOR]


@hookimpl
def nexfort_graph_passes(config):
    opts = options_of(config, "example", ExampleOptions)  # frozen, typed
    if opts.relu_floor is None:
        return []
    return [ReluFloorPass(opts)]
