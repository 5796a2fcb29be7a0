"""S copies of one network trained as one model: the students of a pack (``students.pack``).

``Stacked(net, S)`` holds every parameter and buffer of ``net`` stacked S times (``torch.func.stack_module_state``:
student s owns row s of each), and its forward is ``torch.func.vmap`` of ``functional_call`` over that axis:
one batch in, (S, B, ...) out. Under ``vmap`` a convolution whose weight carries the student axis and whose input
does not (the first layer: every student sees the same batch) becomes one convolution with S times the output
channels, and the later ones grouped convolutions of S groups, what HFTA builds by hand. Each student keeps its
own BatchNorm statistics (its rows of the running buffers, updated in place by the training forward).

Everything elementwise stays per student: one ``torch.optim.SGD`` over the stacked parameters is S independent
SGDs (momentum, weight decay and learning rate act row by row), and ``member(s)`` is student s as a plain
module of ``net``'s class, for evaluation, saving and the records.
"""

from __future__ import annotations

import copy

import torch
from torch.func import functional_call, stack_module_state, vmap


def _slot(name: str) -> str:
    return name.replace(".", "__")  # a registered name holds no dots


class Stacked(torch.nn.Module):
    """``students`` copies of ``net`` (each starting from ``net``'s weights), stacked on a leading axis."""

    def __init__(self, net: torch.nn.Module, students: int):
        super().__init__()
        if students < 1:
            raise ValueError(f"students={students}: a stack holds at least one")
        self.students = students
        params, buffers = stack_module_state([net] * students)  # new tensors: stacking copies
        self._names = list(params)
        self._buffer_names = list(buffers)
        for name, p in params.items():  # in net.parameters() order: an optimizer sees them as it sees net's
            self.register_parameter(_slot(name), torch.nn.Parameter(p.detach()))
        for name, b in buffers.items():
            self.register_buffer(_slot(name), b)
        # not submodules (out of state_dict, .to() and .parameters()): the structure the stacked rows are called
        # through, and a plain module of the net's class for member()
        self.__dict__["_template"] = copy.deepcopy(net).to("meta")
        self.__dict__["_net"] = copy.deepcopy(net).cpu()

    def stacked_params(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, _slot(n)) for n in self._names}

    def stacked_buffers(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, _slot(n)) for n in self._buffer_names}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every student on the same batch ``x``: (S, B, ...). The mode (train/eval) is this module's."""
        self._template.train(self.training)

        def one(p, b, inputs):
            return functional_call(self._template, (p, b), (inputs,))

        return vmap(one, in_dims=(0, 0, None), randomness="different")(self.stacked_params(),
                                                                      self.stacked_buffers(), x)

    @torch.no_grad()
    def member(self, s: int) -> torch.nn.Module:
        """Student ``s`` as a plain module of the net's class (its own copy of row ``s``), in eval mode."""
        net = copy.deepcopy(self._net)
        state = {n: t[s].clone() for n, t in {**self.stacked_params(), **self.stacked_buffers()}.items()}
        net.load_state_dict(state)
        return net.to(next(iter(self.stacked_params().values())).device).eval()

    @torch.no_grad()
    def zero_member(self, s: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Row ``s`` of every parameter, gradient, buffer and optimizer state set to 0: a dead student that
        computes finite zeros from now on (its loss is left out of the sum; nothing of it reaches the others)."""
        for t in [*self.stacked_params().values(), *self.stacked_buffers().values()]:
            t[s].zero_()
            if t.grad is not None:
                t.grad[s].zero_()
        if optimizer is not None:
            for p in self.stacked_params().values():
                for v in optimizer.state.get(p, {}).values():
                    if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == self.students:
                        v[s].zero_()
