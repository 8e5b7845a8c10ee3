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
            dense = []
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["sum"] = torch.zeros_like(param)
                    if group["momentum"] > 0:
                        state["velocity"] = torch.zeros_like(param)
                if param.grad.is_sparse:
                    self._sparse_update(param, state, group)
                else:
                    dense.append(param)
            if dense:
                self._dense_update(dense, group)
        return loss

    def _dense_update(self, params, group):
        # One fused (foreach) kernel per operation for all dense parameters: a step has many small ones.
        grads = [p.grad for p in params]
        sums = [self.state[p]["sum"] for p in params]
        torch._foreach_addcmul_(sums, grads, grads)
        denominators = torch._foreach_sqrt(sums)
        torch._foreach_add_(denominators, group["eps"])
        if group["momentum"] > 0:
            velocities = [self.state[p]["velocity"] for p in params]
            torch._foreach_mul_(velocities, group["momentum"])
            torch._foreach_addcdiv_(velocities, grads, denominators, value=group["lr"])
            torch._foreach_sub_(params, velocities)
        else:
            torch._foreach_addcdiv_(params, grads, denominators, value=-group["lr"])

    @staticmethod
    def _sparse_update(param, state, group):
        grad = param.grad.coalesce()  # one row per touched index, duplicates summed
        rows, values = grad.indices()[0], grad.values()
        sums = state["sum"].index_select(0, rows).addcmul_(values, values)
        state["sum"].index_copy_(0, rows, sums)
        step = values / sums.sqrt_().add_(group["eps"])
        if group["momentum"] > 0:
            step = state["velocity"].index_select(0, rows).mul_(group["momentum"]).add_(step, alpha=group["lr"])
            state["velocity"].index_copy_(0, rows, step)
            param.index_add_(0, rows, step, alpha=-1.0)
        else:
            param.index_add_(0, rows, step, alpha=-group["lr"])
