"""Weight stashing (PipeDream, Narayanan et al. 2019) for a graph whose backward comes later.

An asynchronous server forwards batch b, keeps its graph, and only back-propagates when the
client's gradient for b arrives, after it has already stepped its optimizer on other batches.
Autograd saved the weights by reference, so those in-place updates would make the backward fail
(or use weights the forward never saw). Inside `stash_weights(module)`, every tensor autograd
saves that shares storage with one of the module's parameters is copied instead: the backward uses
exactly the forward's weights, and the gradients still accumulate into the live parameters.
The cost is one copy of the weights per graph kept, no recomputation.
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def stash_weights(module: torch.nn.Module):
    storages = {param.untyped_storage().data_ptr() for param in module.parameters()}

    def pack(tensor: torch.Tensor):
        if tensor.untyped_storage().data_ptr() in storages:
            return tensor.detach().clone()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield
