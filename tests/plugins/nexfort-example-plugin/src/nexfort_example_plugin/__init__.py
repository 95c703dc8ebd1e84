"""Example third-party nexfort plugin: a post-grad pass that rewrites ``relu(x)`` into ``clamp_min(x, floor)``.

With ``options={"example.relu_floor": 0.0}`` the rewrite keeps the model's numerics (relu == clamp_min(x, 0));
any other floor visibly changes the compiled graph's output, which is how the tests prove that a plugin
installed only through its entry point reaches the compiled code, and that a change of its options is a cache
miss in Inductor (never stale code). Off unless ``example.relu_floor`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from nexfort.core import GraphPass, hookimpl


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


@hookimpl
def nexfort_graph_passes(config):
    opts = config.options.example
    if opts.relu_floor is None:
        return []
    return [ReluFloorPass(ExampleOptions(relu_floor=opts.relu_floor))]
