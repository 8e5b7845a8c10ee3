"""Adagrad with momentum, the optimizer of the official GRU4Rec (Hidasi & Karatzoglou, CIKM 2018)."""

import torch


class AdagradMomentum(torch.optim.Optimizer):
    """Adagrad whose steps are accumulated with momentum: v <- m v + lr g / (sqrt(G) + eps); p <- p - v.

    With ``momentum=0`` this is exactly ``torch.optim.Adagrad`` (same ``eps``). A sparse gradient (from a
    sparse embedding) updates the accumulator, the velocity and the weights of the rows it touches only.
    """

    def __init__(self, params, lr=0.01, momentum=0.0, eps=1e-10):
        if lr <= 0:
            raise ValueError(f"learning rate {lr} must be > 0")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum {momentum} must be in [0, 1)")
        super().__init__(params, dict(lr=lr, momentum=momentum, eps=eps))

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
        # One fused (foreach) kernel per operation for all of them: a step has many small ones.
        group = self._group(params[0])
        states = [self._state(p) for p in params]
        sums = [state["sum"] for state in states]
        torch._foreach_addcmul_(sums, grads, grads)
        denominators = torch._foreach_sqrt(sums)
        torch._foreach_add_(denominators, group["eps"])
        if group["momentum"] > 0:
            velocities = [state["velocity"] for state in states]
            torch._foreach_mul_(velocities, group["momentum"])
            torch._foreach_addcdiv_(velocities, grads, denominators, value=group["lr"])
            torch._foreach_sub_(params, velocities)
        else:
            torch._foreach_addcdiv_(params, grads, denominators, value=-group["lr"])

    @torch.no_grad()
    def update_rows(self, param, rows, row_grads):
        """One update of the rows ``rows`` of ``param``, whose gradient is ``row_grads`` (a row index may repeat:
        its gradients are summed, as in a sparse gradient); the other rows, their sums and velocities stay."""
        group, state = self._group(param), self._state(param)
        rows, position = torch.unique(rows, return_inverse=True)
        grads = row_grads.new_zeros((len(rows), *row_grads.shape[1:])).index_add_(0, position, row_grads)
        sums = state["sum"].index_select(0, rows).addcmul_(grads, grads)
        state["sum"].index_copy_(0, rows, sums)
        step = grads.div_(sums.sqrt_().add_(group["eps"]))
        if group["momentum"] > 0:
            step = state["velocity"].index_select(0, rows).mul_(group["momentum"]).add_(step, alpha=group["lr"])
            state["velocity"].index_copy_(0, rows, step)
            param.index_add_(0, rows, step, alpha=-1.0)
        else:
            param.index_add_(0, rows, step, alpha=-group["lr"])
