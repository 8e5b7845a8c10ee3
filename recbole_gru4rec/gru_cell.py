"""One GRU step (PyTorch's gate layout r, z, n) with its backward pass written out.

A session-parallel step is one tiny GRU step, where autograd's bookkeeping for the gate slices costs more
than the arithmetic. :func:`gru_forward` and :func:`gru_backward` serve both training paths: the autograd
one through :class:`GRUCell`, and the hand-written step of :mod:`recbole_gru4rec.fused_step`.
"""

import torch


def gru_forward(input_gates, hidden, weight_hh, bias_hh):
    """The next hidden state from the input gates W_i x + b_i; returns (new hidden, cache for the backward)."""
    size = hidden.shape[1]
    hidden_gates = torch.addmm(bias_hh, hidden, weight_hh.t())
    reset_update = torch.sigmoid(input_gates[:, : 2 * size] + hidden_gates[:, : 2 * size])
    hidden_candidate = hidden_gates[:, 2 * size :]
    candidate = torch.tanh(torch.addcmul(input_gates[:, 2 * size :], reset_update[:, :size], hidden_candidate))
    new_hidden = torch.lerp(candidate, hidden, reset_update[:, size:])  # (1 - z) * n + z * h
    return new_hidden, (hidden, reset_update, candidate, hidden_candidate)


def gru_backward(grad, cache, weight_hh, needs_hidden_grad=True):
    """Gradients of the input gates, the previous hidden state (None unless asked), W_hh and b_hh."""
    hidden, reset_update, candidate, hidden_candidate = cache
    size = hidden.shape[1]
    reset, update = reset_update[:, :size], reset_update[:, size:]
    grad_candidate = grad * (1 - update) * (1 - candidate * candidate)  # through the mix and the tanh
    grad_reset = grad_candidate * hidden_candidate * reset * (1 - reset)  # through the sigmoid
    grad_update = grad * (hidden - candidate) * update * (1 - update)
    grad_input_gates = torch.cat([grad_reset, grad_update, grad_candidate], dim=1)
    grad_hidden_gates = torch.cat([grad_reset, grad_update, grad_candidate * reset], dim=1)
    grad_hidden = torch.addmm(grad * update, grad_hidden_gates, weight_hh) if needs_hidden_grad else None
    return grad_input_gates, grad_hidden, grad_hidden_gates.t() @ hidden, grad_hidden_gates.sum(0)


class GRUCell(torch.autograd.Function):
    """:func:`gru_forward` for autograd, differentiated by :func:`gru_backward`.

    Checked against numerical derivatives (gradcheck) and against torch.nn.GRU in the tests.
    """

    @staticmethod
    def forward(ctx, input_gates, hidden, weight_hh, bias_hh):
        new_hidden, cache = gru_forward(input_gates, hidden, weight_hh, bias_hh)
        ctx.save_for_backward(weight_hh, *cache)
        return new_hidden

    @staticmethod
    def backward(ctx, grad):
        weight_hh, *cache = ctx.saved_tensors
        return gru_backward(grad, cache, weight_hh, needs_hidden_grad=ctx.needs_input_grad[1])


def gru_cell(input_gates, hidden, hidden_layer):
    """One GRU step of ``hidden_layer`` (a Linear holding W_hh and b_hh), differentiable."""
    return GRUCell.apply(input_gates, hidden, hidden_layer.weight, hidden_layer.bias)
