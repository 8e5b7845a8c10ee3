"""Adagrad with momentum, the optimizer of the official GRU4Rec (Hidasi & Karatzoglou, CIKM 2018).

As in the author's code (hidasib/GRU4Rec_PyTorch_Official, ``IndexedAdagradM``): eps = 1e-6 inside the square
root, so a tiny first gradient makes a tiny step (torch's Adagrad adds its 1e-10 outside the root, which makes
the first step about ``lr * sign(g)`` whatever the gradient's size).
"""

import torch


class AdagradMomentum(torch.optim.Optimizer):
    """Adagrad whose steps are accumulated with momentum: G <- G + g^2; v <- m v + lr g / sqrt(G + eps); p <- p - v.

    A sparse gradient (from a sparse embedding) updates the accumulator, the velocity and the weights of the rows
    it touches only.
    """

    def __init__(self, params, lr=0.01, momentum=0.0, eps=1e-6):
        if lr <= 0:
            raise ValueError(f"learning rate {lr} must be > 0")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum {momentum} must be in [0, 1)")
        super().__init__(params, dict(lr=lr, momentum=momentum, eps=eps))
        self.row_scratches = {}

    @torch.no_grad()
    def step(self, closure=None):
        """Apply one update to every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            dense = [p for p in group["params"] if p.grad is not None and not p.grad.is_sparse]
            if dense:
                self.update_dense(dense, [p.grad for p in dense])
            for param in group["params"]:
                if param.grad is not None and param.grad.is_sparse:
                    grad = param.grad if param.grad.sparse_dim() == 1 else param.grad.to_dense().to_sparse(1)
                    # Indices may repeat (an uncoalesced gradient): update_rows sums them.
                    self.update_rows(param, grad._indices()[0], grad._values())
        return loss

    def accumulators(self, param):
        """The squared-gradient sum of ``param`` and its velocity (None without momentum), created when missing."""
        state = self._state(param)
        return state["sum"], state.get("velocity")

    def _state(self, param):
        state = self.state[param]
        if not state:
            state["sum"] = torch.zeros_like(param)
            if self._group(param)["momentum"] > 0:
                state["velocity"] = torch.zeros_like(param)
        return state

    def _group(self, param):
        for group in self.param_groups:
            if any(param is member for member in group["params"]):
                return group
        raise ValueError("the parameter is not optimized by this optimizer")

    @torch.no_grad()
    def update_dense(self, params, grads):
        """One update of dense parameters (all of one param group) with the given gradients."""
        group = self._group(params[0])
        sums, velocities = zip(*(self.accumulators(p) for p in params))
        adagrad_dense_(params, grads, list(sums), None if velocities[0] is None else list(velocities),
                       group["lr"], group["momentum"], group["eps"])

    @torch.no_grad()
    def update_rows(self, param, rows, row_grads):
        """One update of the rows ``rows`` of ``param``, whose gradient is ``row_grads`` (a row index may repeat:
        its gradients are summed, as in a sparse gradient); the other rows, their sums and velocities stay."""
        group = self._group(param)
        adagrad_rows_(param, rows, row_grads, *self.accumulators(param), self.row_scratch(param),
                      group["lr"], group["momentum"], group["eps"])

    def row_scratch(self, param):
        """A tensor shaped like ``param`` where :func:`adagrad_rows_` sums the gradients of repeated rows.

        Kept outside the optimizer's state, so checkpoints do not carry it."""
        scratch = self.row_scratches.get(param)
        if scratch is None:
            scratch = self.row_scratches[param] = torch.zeros_like(param)
        return scratch


def adagrad_dense_(params, grads, sums, velocities, lr, momentum, eps):
    """Adagrad (with momentum when ``velocities`` is not None) on dense tensors, in place."""
    # One fused (foreach) kernel per operation for all of them: a step has many small ones.
    torch._foreach_addcmul_(sums, grads, grads)
    denominators = torch._foreach_add(sums, eps)
    torch._foreach_sqrt_(denominators)
    if velocities is not None:
        torch._foreach_mul_(velocities, momentum)
        torch._foreach_addcdiv_(velocities, grads, denominators, value=lr)
        torch._foreach_sub_(params, velocities)
    else:
        torch._foreach_addcdiv_(params, grads, denominators, value=-lr)


def adagrad_rows_(param, rows, row_grads, sums, velocity, scratch, lr, momentum, eps):
    """Adagrad (with momentum when ``velocity`` is not None) on the rows ``rows`` of ``param``, in place.

    A repeated row gets the sum of its gradients, once: the sums are formed in ``scratch`` (shaped like
    ``param``; only the rows ``rows`` are used, cleared first), each occurrence reads its row's total and
    computes the same new values, so writing them once per occurrence leaves one update, without sorting.
    """
    # Clearing before summing (not after reading) lets torch.compile update every tensor in place; clearing
    # after the read made it copy the whole scratch tensor at every step.
    scratch.index_fill_(0, rows, 0.0)
    scratch.index_add_(0, rows, row_grads)
    grads = scratch.index_select(0, rows)
    row_sums = sums.index_select(0, rows).addcmul_(grads, grads)
    sums.index_copy_(0, rows, row_sums)
    step = grads.div_(row_sums.add_(eps).sqrt_())
    if velocity is not None:
        step = velocity.index_select(0, rows).mul_(momentum).add_(step, alpha=lr)
        velocity.index_copy_(0, rows, step)
        param.index_copy_(0, rows, param.index_select(0, rows).sub_(step))
    else:
        param.index_copy_(0, rows, param.index_select(0, rows).sub_(step, alpha=lr))
