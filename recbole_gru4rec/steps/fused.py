"""GRU4RecPaper's session-parallel training step written out by hand: forward, backward and Adagrad update.

A session-parallel step is small (B rows, one event each), so autograd's graph, the sparse gradients of the
item-indexed weights (built, then sorted to coalesce them) and the optimizer's per-parameter loop cost several
times more than the arithmetic. Here the step is the arithmetic: the forward keeps what the backward needs,
the backward is the chain rule through each layer, and the gradients of the item-indexed weights stay the
rows the step touched (the input items, the scored columns; with a shared embedding both, summed), updated by
:func:`adagrad_rows_`, the function
behind :meth:`AdagradMomentum.update_rows`. The loss gradient on the (B, K) score matrix is
:func:`loss_and_gradient`'s.

The updates are those of the autograd path (:func:`~recbole_gru4rec.steps.autograd.session_loss`, ``backward``,
``AdagradMomentum.step``) up to float rounding, with the same random draws in the same order; the tests
compare the two step by step.
"""

import warnings

import torch

from recbole_gru4rec.gru_cell import gru_backward, gru_forward
from recbole_gru4rec.layers import dropout_mask
from recbole_gru4rec.losses import cross_entropy_with_gradient, pairwise_with_gradient, softmax_weighted_with_gradient
from recbole_gru4rec.optimizers import AdagradMomentum, adagrad_dense_, adagrad_rows_
from recbole_gru4rec.session_data import INPUT_FIELD
from recbole_gru4rec.steps import activations


def unfused_reason(model, optimizer, config):
    """Why the fused step cannot train this setting (a phrase naming the option), or None when it can."""
    if not isinstance(optimizer, AdagradMomentum):
        return (f"learner: {config['learner']}, weight_decay: {config['weight_decay']} (the fused step updates with "
                "adagrad or adagrad_momentum, without weight decay)")
    if config["clip_grad_norm"]:
        return "clip_grad_norm is set (the fused step does not clip)"
    if len(optimizer.param_groups) != 1:
        return "the optimizer has several parameter groups"
    return None


def loss_and_gradient(model, logits, columns, targets):
    """``model.loss_of_logits`` and its gradient with respect to ``logits``: written out for TOP1, BPR, TOP1-max,
    BPR-max, and for cross-entropy on linear scores; from autograd on the (B, K) score matrix for cross-entropy on
    other scores."""
    column_ids, target_ids = model.negative_ids(columns, targets)
    if model.loss_type == "CE" and model.activation_name == "linear":
        return cross_entropy_with_gradient(model.scores(logits, columns), column_ids, target_ids, model.loss_divisor)
    if model.loss_type != "CE":  # logq > 0 needs CE: here the scores are the activation's
        scores = model.scores(logits, columns)
        if model.loss_type in ("TOP1", "BPR"):
            loss, gradient = pairwise_with_gradient(model.loss_type, scores, column_ids, target_ids, model.loss_divisor)
        else:
            loss, gradient = softmax_weighted_with_gradient(model.loss_type, scores, column_ids, target_ids,
                                                            model.bpreg, model.loss_divisor)
        return loss, gradient.mul_(activations.slope(model.activation_name, logits, scores))
    with torch.enable_grad():
        logits = logits.detach().requires_grad_()
        loss = model.loss_of_logits(logits, columns, targets)
        (gradient,) = torch.autograd.grad(loss, logits)
    return loss.detach(), gradient


class FusedTrainingStep:
    """Trains ``model`` (a :class:`GRU4RecPaper`) by one session-parallel step per call, updating with
    ``optimizer``; the hidden state is carried in ``state`` (a :class:`~recbole_gru4rec.steps.state.SessionState`).

    With ``compiled=True`` the arithmetic of the step (everything after the random draws) goes through
    ``torch.compile``: its few dozen small operations become a few generated kernels. It compiles at the first
    step and once more when the steps narrow at the end of the epoch (the batch size becomes dynamic).
    """

    def __init__(self, model, optimizer, state, compiled=False):
        self.model, self.optimizer, self.state = model, optimizer, state
        # The item-indexed input rows: W_ih's (n_items, 3H) for the 1-of-N input (its product with a one-hot
        # vector), else the embedding table, which with constrained_embedding is the output weights themselves.
        self.embedded = model.item_embedding is not None
        self.shared = model.constrained_embedding
        self.input_weights = model.item_embedding.weight if self.embedded else model.input_layer.weight
        self.output_weights = model.output_weights.weight
        self.hidden_layers = list(model.hidden_layers)
        self.upper_input_layers = list(model.upper_input_layers)
        self.feedforward = model.feedforward
        # Updated densely, as their dense gradients are in the autograd path; the output bias, like the item
        # rows, only where a step scores (the author's sparse By).
        self.output_bias = model.output_bias
        self.input_layer = model.input_layer if self.embedded else None  # the embedding's W_ih and b_ih
        self.dense_params = [model.input_layer.weight, model.input_layer.bias] if self.embedded else [model.input_bias]
        for layer in self.hidden_layers + self.upper_input_layers + [self.feedforward]:
            if layer is not None:
                self.dense_params += [layer.weight, layer.bias]
        self.arithmetic = self._arithmetic
        if compiled:
            # torch's CPU code generation calls a helper that torch itself deprecated: nothing for users to act on.
            warnings.filterwarnings("ignore", message=r"`torch._prims_common.check` is deprecated", category=FutureWarning)
            self.arithmetic = torch.compile(self._arithmetic)

    @torch.no_grad()
    def __call__(self, interaction):
        """Train on one session-parallel step; returns its loss (a 0-dim tensor)."""
        model = self.model
        items, targets = interaction[INPUT_FIELD], interaction[model.POS_ITEM_ID]
        hidden = self.state.carried(interaction)
        # The random draws, in the autograd path's order (input dropout, then each layer's), come first: the
        # arithmetic then holds no random state, and compiled or not it uses the same numbers.
        # One value per row for the 1-of-N input (see _arithmetic), one per embedding dimension otherwise.
        input_width = self.input_weights.shape[1] if self.embedded else 1
        input_mask = (dropout_mask(hidden.new_empty(len(items), input_width), model.dropout_input)
                      if model.dropout_input > 0 else None)
        hidden_masks = [dropout_mask(hidden[0], model.dropout_hidden) if model.dropout_hidden > 0 else None
                        for _ in self.hidden_layers]
        columns = model.negatives.columns(targets)
        optimizer = self.optimizer
        accumulators = [optimizer.accumulators(param) for param in self.dense_params]
        input_rows = (*optimizer.accumulators(self.input_weights), optimizer.row_scratch(self.input_weights))
        output_rows = (*optimizer.accumulators(self.output_weights), optimizer.row_scratch(self.output_weights))
        bias_rows = (*optimizer.accumulators(self.output_bias), optimizer.row_scratch(self.output_bias))
        group = optimizer.param_groups[0]
        loss, self.state.hidden = self.arithmetic(
            items, targets, columns, hidden, input_mask, hidden_masks, accumulators, input_rows, output_rows,
            bias_rows, (group["lr"], group["momentum"], group["eps"]),
        )
        return loss

    def _arithmetic(self, items, targets, columns, hidden, input_mask, hidden_masks, accumulators, input_rows,
                    output_rows, bias_rows, hyperparameters):
        """Forward, backward and update of one step; returns (loss, the new hidden states)."""
        model = self.model
        grads = {}

        # Forward, keeping what the backward needs.
        input_rows_of_items = self.input_weights.index_select(0, items)
        if input_mask is not None:
            # Dropout on a one-hot vector keeps or drops its single 1, so it scales the whole gathered row.
            input_rows_of_items = input_rows_of_items * input_mask
        if self.embedded:
            gates = torch.addmm(self.input_layer.bias, input_rows_of_items, self.input_layer.weight.t())
        else:
            gates = input_rows_of_items + model.input_bias
        caches, outputs, new_hidden = [], [], []
        for layer, hidden_layer in enumerate(self.hidden_layers):
            state, cache = gru_forward(gates, hidden[layer], hidden_layer.weight, hidden_layer.bias, model.reset_before)
            output = state * hidden_masks[layer] if hidden_masks[layer] is not None else state
            caches.append(cache)
            outputs.append(output)
            new_hidden.append(output)  # the dropped output is also the carried state, as in the author's code
            if layer + 1 < len(self.hidden_layers):
                upper = self.upper_input_layers[layer]
                gates = torch.addmm(upper.bias, output, upper.weight.t())
        head = outputs[-1]
        if self.feedforward is not None:
            head = torch.tanh(torch.addmm(self.feedforward.bias, head, self.feedforward.weight.t()))
        column_weights = self.output_weights.index_select(0, columns)
        logits = torch.addmm(self.output_bias.index_select(0, columns), head, column_weights.t())

        loss, grad_logits = loss_and_gradient(model, logits, columns, targets)

        # Backward, top to bottom.
        grad_head = grad_logits @ column_weights
        column_grads = grad_logits.t() @ head
        grad_output = grad_head
        if self.feedforward is not None:
            grad_pre = grad_head * (1 - head * head)
            grads[self.feedforward.weight] = grad_pre.t() @ outputs[-1]
            grads[self.feedforward.bias] = grad_pre.sum(0)
            grad_output = grad_pre @ self.feedforward.weight
        for layer in reversed(range(len(self.hidden_layers))):
            hidden_layer = self.hidden_layers[layer]
            grad_state = grad_output * hidden_masks[layer] if hidden_masks[layer] is not None else grad_output
            # The incoming hidden state is a constant (carried from the previous step, detached).
            grad_gates, _, grads[hidden_layer.weight], grads[hidden_layer.bias] = gru_backward(
                grad_state, caches[layer], hidden_layer.weight, needs_hidden_grad=False, reset_before=model.reset_before
            )
            if layer > 0:
                upper = self.upper_input_layers[layer - 1]
                grads[upper.weight] = grad_gates.t() @ outputs[layer - 1]
                grads[upper.bias] = grad_gates.sum(0)
                grad_output = grad_gates @ upper.weight
        if self.embedded:
            grads[self.input_layer.weight] = grad_gates.t() @ input_rows_of_items
            grads[self.input_layer.bias] = grad_gates.sum(0)
            input_grads = grad_gates @ self.input_layer.weight
        else:
            grads[model.input_bias] = grad_gates.sum(0)
            input_grads = grad_gates
        if input_mask is not None:
            input_grads = input_grads * input_mask

        # Update.
        sums, velocities = zip(*accumulators)
        adagrad_dense_(self.dense_params, [grads[p] for p in self.dense_params], list(sums),
                       None if velocities[0] is None else list(velocities), *hyperparameters)
        if self.shared:  # one update of the rows both uses touched, from their summed gradients, as autograd's
            adagrad_rows_(self.output_weights, torch.cat([items, columns]), torch.cat([input_grads, column_grads]),
                          *output_rows, *hyperparameters)
        else:
            adagrad_rows_(self.input_weights, items, input_grads, *input_rows, *hyperparameters)
            adagrad_rows_(self.output_weights, columns, column_grads, *output_rows, *hyperparameters)
        adagrad_rows_(self.output_bias, columns, grad_logits.sum(0), *bias_rows, *hyperparameters)
        return loss, torch.stack(new_hidden)
