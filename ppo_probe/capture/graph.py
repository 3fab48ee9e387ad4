"""Find the leaf tensors (parameters) that a tensor depends on by walking its autograd graph."""

from __future__ import annotations

from typing import Any

import torch


def graph_leaves(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Leaf tensors requiring grad that ``tensor`` was computed from (each once)."""
    if tensor.grad_fn is None:
        return [tensor] if tensor.requires_grad else []
    leaves: dict[int, torch.Tensor] = {}
    seen: set[object] = set()
    stack: list[Any] = [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad nodes hold the leaf
        if isinstance(variable, torch.Tensor):
            leaves[id(variable)] = variable
            continue
        stack.extend(child for child, _ in node.next_functions)
    return list(leaves.values())
