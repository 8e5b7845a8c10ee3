"""One GRU step (gate layout r, z, n, as PyTorch's) with its backward pass written out, in the paper's form or
in PyTorch's variant.

A session-parallel step is one tiny GRU step, where autograd's bookkeeping for the gate slices costs more
than the arithmetic. :func:`gru_forward` and :func:`gru_backward` serve both training paths: the autograd
one through :class:`GRUCell`, and the hand-written step of :mod:`recbole_gru4rec.steps.fused`.
"""

import torch


def gru_forward(input_gates, hidden, weight_hh, bias_hh, reset_before=True):
    """The next hidden state from the input gates W_i x + b_i; returns (new hidden, cache for the backward).

    ``reset_before``: the paper's GRU (ICLR 2016, eq. 2-4; Cho et al. 2014): the candidate is
    tanh(W_n x + U_n (r * h) + b_n), the reset gate applied to h before the recurrent matrix. Otherwise
    PyTorch's variant (``torch.nn.GRU``): tanh(W_n x + r * (U_n h + b_n)).
    """
    size = hidden.shape[1]
    if reset_before:
        gates_rz = torch.addmm(bias_hh[: 2 * size], hidden, weight_hh[: 2 * size].t())
        reset_update = torch.sigmoid(input_gates[:, : 2 * size] + gates_rz)
        reset_hidden = reset_update[:, :size] * hidden
        hidden_candidate = torch.addmm(bias_hh[2 * size :], reset_hidden, weight_hh[2 * size :].t())
        candidate = torch.tanh(input_gates[:, 2 * size :] + hidden_candidate)
    else:
        hidden_gates = torch.addmm(bias_hh, hidden, weight_hh.t())
        reset_update = torch.sigmoid(input_gates[:, : 2 * size] + hidden_gates[:, : 2 * size])
        hidden_candidate = hidden_gates[:, 2 * size :]
        candidate = torch.tanh(torch.addcmul(input_gates[:, 2 * size :], reset_update[:, :size], hidden_candidate))
    new_hidden = torch.lerp(candidate, hidden, reset_update[:, size:])  # (1 - z) * n + z * h
    return new_hidden, (hidden, reset_update, candidate, hidden_candidate)


def gru_backward(grad, cache, weight_hh, needs_hidden_grad=True, reset_before=True):
    """Gradients of the input gates, the previous hidden state (None unless asked), W_hh and b_hh."""
    hidden, reset_update, candidate, hidden_candidate = cache
    size = hidden.shape[1]
    reset, update = reset_update[:, :size], reset_update[:, size:]
    grad_candidate = grad * (1 - update) * (1 - candidate * candidate)  # through the mix and the tanh
    grad_update = grad * (hidden - candidate) * update * (1 - update)
    if reset_before:
        grad_reset_hidden = grad_candidate @ weight_hh[2 * size :]  # through U_n, onto r * h
        grad_reset = grad_reset_hidden * hidden * reset * (1 - reset)
        grad_input_gates = torch.cat([grad_reset, grad_update, grad_candidate], dim=1)
        grad_hidden_gates = grad_input_gates  # both sides add into the same pre-activations
        grad_weight = torch.cat([grad_input_gates[:, : 2 * size].t() @ hidden, grad_candidate.t() @ (reset * hidden)])
        grad_hidden = None
        if needs_hidden_grad:
            grad_hidden = torch.addmm(grad * update + grad_reset_hidden * reset, grad_input_gates[:, : 2 * size],
                                      weight_hh[: 2 * size])
    else:
        grad_reset = grad_candidate * hidden_candidate * reset * (1 - reset)  # through the sigmoid
        grad_input_gates = torch.cat([grad_reset, grad_update, grad_candidate], dim=1)
        grad_hidden_gates = torch.cat([grad_reset, grad_update, grad_candidate * reset], dim=1)
        grad_weight = grad_hidden_gates.t() @ hidden
        grad_hidden = torch.addmm(grad * update, grad_hidden_gates, weight_hh) if needs_hidden_grad else None
    return grad_input_gates, grad_hidden, grad_weight, grad_hidden_gates.sum(0)


class GRUCell(torch.autograd.Function):
    """:func:`gru_forward` for autograd, differentiated by :func:`gru_backward`.

    Checked against numerical derivatives (gradcheck) and against torch.nn.GRU in the tests.
    """

    @staticmethod
    def forward(ctx, input_gates, hidden, weight_hh, bias_hh, reset_before):
        new_hidden, cache = gru_forward(input_gates, hidden, weight_hh, bias_hh, reset_before)
        ctx.save_for_backward(weight_hh, *cache)
        ctx.reset_before = reset_before
        return new_hidden

    @staticmethod
    def backward(ctx, grad):
        weight_hh, *cache = ctx.saved_tensors
        return (*gru_backward(grad, cache, weight_hh, ctx.needs_input_grad[1], ctx.reset_before), None)


def gru_cell(input_gates, hidden, hidden_layer, reset_before=True):
    """One GRU step of ``hidden_layer`` (a Linear holding W_hh and b_hh), differentiable."""
    return GRUCell.apply(input_gates, hidden, hidden_layer.weight, hidden_layer.bias, reset_before)
