"""GRU4RecPaper: GRU4Rec as in Hidasi et al., ICLR 2016, with the CIKM 2018 extensions, for RecBole.

Reads top to bottom: options and layers, weight initialisation, the layers of one step (the GRU cell is in
gru_cell.py, the hand-written training step in fused_step.py), the two ways to run the
network (one session-parallel step, or a whole item sequence), then RecBole's contract: ``calculate_loss``,
``predict`` and ``full_sort_predict``.

The 1-of-N input is a row gather of the first layer's input weights: multiplying a one-hot vector by a
matrix selects one of its rows, so the gather computes the same function without building the vector.
"""

import math
from logging import getLogger

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_gru4rec import options
from recbole_gru4rec.gru_cell import gru_cell
from recbole_gru4rec.losses import cross_entropy_with_gradient, pairwise_with_gradient, sampled_loss
from recbole_gru4rec.sampling import PopularitySampler
from recbole_gru4rec.session_data import CARRY_FIELD, INPUT_FIELD, ROWS_FIELD, user_sessions


def final_activation(name):
    """The score activation called ``name``: ``tanh``, ``linear`` or ``elu-<alpha>``."""
    if name == "tanh":
        return torch.tanh
    if name == "linear":
        return lambda scores: scores
    alpha = float(name.split("-", 1)[1])
    return lambda scores: F.elu(scores, alpha)


def final_activation_slope(name, logits, scores):
    """The derivative of the activation ``name`` at ``logits``, given its values ``scores`` there."""
    if name == "tanh":
        return 1 - scores * scores
    if name == "linear":
        return torch.ones_like(logits)
    alpha = float(name.split("-", 1)[1])
    return torch.where(logits > 0, 1.0, scores + alpha)


def dropout_mask(like, p):
    """Inverted-dropout multipliers shaped like ``like``: 0 with probability p, else 1 / (1 - p).

    A uniform draw compared to p is ~3x faster on CPU than the Bernoulli sampler behind F.dropout, and this
    runs at every session-parallel step.
    """
    return torch.rand_like(like).ge_(p).mul_(1.0 / (1.0 - p))


def dropout(values, p, training):
    """Inverted dropout: the same function as F.dropout."""
    if not training or p == 0:
        return values
    return values * dropout_mask(values, p)


def init_uniform_(weight, fan_in, fan_out):
    """Uniform in [-x, x] with x = sqrt(6 / (fan_in + fan_out)), the paper's rule from the matrix shape."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    nn.init.uniform_(weight, -bound, bound)


class GRU4RecPaper(SequentialRecommender):
    """GRU4Rec trained on session-parallel mini-batches with sampled ranking losses (ICLR 2016, CIKM 2018)."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        options.fill_defaults(config)
        options.validate(config)
        super().__init__(config, dataset)
        self.logger = getLogger()

        self.hidden_size = config["hidden_size"]
        self.num_layers = config["num_layers"]
        self.embedding_size = config["embedding_size"]
        self.constrained_embedding = config["constrained_embedding"]
        self.ff_hidden_size = config["ff_hidden_size"]
        self.loss_type = config["loss_type"]
        self.n_sample = config["n_sample"]
        self.bpreg = config["bpreg"]
        self.sample_alpha = config["sample_alpha"]
        self.logq = config["logq"]
        self.activation_name = config["final_activation"]
        self.activation = final_activation(self.activation_name)
        self.sparse = self.uses_sparse_gradients(config)
        self.dropout_input = config["dropout_prob_input"]
        self.dropout_hidden = config["dropout_prob_hidden"]

        hidden, gates = self.hidden_size, 3 * self.hidden_size
        self.output_size = self.ff_hidden_size or hidden
        self.output_weights = nn.Embedding(self.n_items, self.output_size, sparse=self.sparse)
        self.output_bias = nn.Parameter(torch.zeros(self.n_items))  # dense gradient: a vector is cheap to update
        if self.constrained_embedding:
            self.item_embedding = self.output_weights
            self.input_layer = nn.Linear(self.output_size, gates)
        elif self.embedding_size > 0:
            self.item_embedding = nn.Embedding(self.n_items, self.embedding_size, sparse=self.sparse)
            self.input_layer = nn.Linear(self.embedding_size, gates)
        else:
            self.item_embedding = None
            self.input_layer = nn.Embedding(self.n_items, gates, sparse=self.sparse)  # rows of W_ih, one per item
            self.input_bias = nn.Parameter(torch.zeros(gates))
        self.upper_input_layers = nn.ModuleList(nn.Linear(hidden, gates) for _ in range(self.num_layers - 1))
        self.hidden_layers = nn.ModuleList(nn.Linear(hidden, gates) for _ in range(self.num_layers))
        self.feedforward = nn.Linear(hidden, self.ff_hidden_size) if self.ff_hidden_size else None
        self._init_weights()

        self.training_hidden = None  # (num_layers, rows, hidden): carried from one session-parallel step to the next
        self.warned_prefix_batches = False
        self.sampler = None  # built at the first training step, on the device of that step
        self.sampler_seed = config["seed"] or 0
        needs_support = self.n_sample > 0 or self.logq > 0
        self.item_support = user_sessions(dataset).item_support(self.n_items) if needs_support else None
        if self.logq > 0:
            popularity = self.item_support.double().clamp(min=1) / self.item_support.sum()
            self.register_buffer("log_popularity", popularity.log().float(), persistent=False)

    @staticmethod
    def uses_sparse_gradients(config):
        """Item-indexed weights get sparse gradients when the optimizer can use them: only touched rows move."""
        return (
            config["learner"].lower() in options.SPARSE_LEARNERS
            and not config["weight_decay"]
            and not config["clip_grad_norm"]
        )

    def _init_weights(self):
        """Every weight matrix uniform in [-x, x] from its shape (per gate for the GRU); biases zero."""
        gate_layers = list(self.upper_input_layers) + list(self.hidden_layers)
        if self.item_embedding is None:
            for block in self.input_layer.weight.data.chunk(3, dim=1):
                init_uniform_(block, self.n_items, self.hidden_size)
        else:
            gate_layers.append(self.input_layer)
        for layer in gate_layers:
            for block in layer.weight.data.chunk(3, dim=0):
                init_uniform_(block, layer.in_features, self.hidden_size)
            nn.init.zeros_(layer.bias)
        if self.embedding_size > 0:
            init_uniform_(self.item_embedding.weight.data, self.n_items, self.embedding_size)
        if self.feedforward is not None:
            init_uniform_(self.feedforward.weight.data, self.hidden_size, self.ff_hidden_size)
            nn.init.zeros_(self.feedforward.bias)
        init_uniform_(self.output_weights.weight.data, self.n_items, self.output_size)
        nn.init.zeros_(self.output_bias)

    # ---- the network ----

    def _input_gates(self, items):
        """W_ih x + b_ih of the first GRU layer for the items, with dropout on the input."""
        if self.item_embedding is None:
            gates = self.input_layer(items)
            if self.training and self.dropout_input > 0:
                # Dropout on a one-hot vector keeps or drops its single 1, so it scales the whole gathered row.
                gates = dropout_mask(gates[:, :1], self.dropout_input) * gates
            return gates + self.input_bias
        embedded = dropout(self.item_embedding(items), self.dropout_input, self.training)
        return self.input_layer(embedded)

    def _step(self, items, hidden):
        """Advance every GRU layer by one event. Returns the top layer's output and the new hidden states."""
        gates = self._input_gates(items)
        new_hidden = []
        for layer, hidden_layer in enumerate(self.hidden_layers):
            state = gru_cell(gates, hidden[layer], hidden_layer)
            new_hidden.append(state)
            output = dropout(state, self.dropout_hidden, self.training)
            if layer + 1 < self.num_layers:
                gates = self.upper_input_layers[layer](output)
        return output, torch.stack(new_hidden)

    def _head(self, output):
        return torch.tanh(self.feedforward(output)) if self.feedforward is not None else output

    def forward(self, item_seq, item_seq_len):
        """The representation after reading each sequence from a zero state: (batch, output_size)."""
        hidden = item_seq.new_zeros((self.num_layers, len(item_seq), self.hidden_size), dtype=torch.float)
        outputs = []
        for position in range(int(item_seq_len.max())):
            output, hidden = self._step(item_seq[:, position], hidden)
            outputs.append(output)
        last = self.gather_indexes(torch.stack(outputs, dim=1), item_seq_len - 1)
        return self._head(last)

    def carried_hidden(self, interaction):
        """The hidden states a session-parallel step starts from: carried row by row, zero where a session starts."""
        carry = interaction[CARRY_FIELD]
        hidden = self.training_hidden
        if ROWS_FIELD in interaction:
            hidden = hidden[:, interaction[ROWS_FIELD]]
        elif hidden is None or hidden.shape[1] != len(carry):
            # A new epoch: its first step starts a session in every row, so the old state is never used.
            return carry.new_zeros(self.num_layers, len(carry), self.hidden_size)
        return hidden * carry[None, :, None]

    def _session_parallel_forward(self, interaction):
        """One session-parallel step; the new hidden states are kept for the next step."""
        output, hidden = self._step(interaction[INPUT_FIELD], self.carried_hidden(interaction))
        self.training_hidden = hidden.detach()
        return self._head(output)

    def _logits(self, output, items):
        """Pre-activation scores of every output row against each of the given items: (rows, len(items))."""
        return torch.addmm(self.output_bias[items], output, self.output_weights(items).T)

    # ---- RecBole's contract ----

    def calculate_loss(self, interaction):
        """Sampled ranking loss of one mini-batch: its targets are each other's negatives, plus extra samples."""
        if CARRY_FIELD in interaction:
            output = self._session_parallel_forward(interaction)
        else:
            self._warn_prefix_batches()
            output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        targets = interaction[self.POS_ITEM_ID]
        columns = self.score_columns(targets)
        return self.loss_of_logits(self._logits(output, columns), columns, targets)

    def score_columns(self, targets):
        """The items a training step scores: the mini-batch targets (the diagonal), then the extra negatives."""
        if self.n_sample == 0:
            return targets
        return torch.cat([targets, self._extra_negatives(targets.device)])

    def loss_of_logits(self, logits, columns, targets):
        """The sampled loss of pre-activation scores (rows: outputs, columns: ``columns``, row i's target in column i)."""
        scores = self._scores(logits, columns)
        negatives = columns[None, :] != targets[:, None]
        return sampled_loss(self.loss_type, scores.diagonal(), scores, negatives, self.bpreg)

    def loss_and_gradient(self, logits, columns, targets):
        """:meth:`loss_of_logits` and its gradient with respect to ``logits``: written out for TOP1 and BPR, and
        for cross-entropy on linear scores; from autograd on the (B, K) score matrix for the other losses."""
        if self.loss_type == "CE" and self.activation_name == "linear":
            return cross_entropy_with_gradient(self._scores(logits, columns), columns, targets)
        if self.loss_type in ("TOP1", "BPR"):  # logq > 0 needs CE: here the scores are the activation's
            scores = self._scores(logits, columns)
            loss, gradient = pairwise_with_gradient(self.loss_type, scores, columns, targets)
            return loss, gradient.mul_(final_activation_slope(self.activation_name, logits, scores))
        with torch.enable_grad():
            logits = logits.detach().requires_grad_()
            loss = self.loss_of_logits(logits, columns, targets)
            (gradient,) = torch.autograd.grad(loss, logits)
        return loss.detach(), gradient

    def _scores(self, logits, columns):
        scores = self.activation(logits)
        if self.logq > 0:
            scores = scores - self.logq * self.log_popularity[columns]
        return scores

    def reseed(self, seed):
        """Restart the extra-negative stream from ``seed`` (the trainer calls this at every epoch start)."""
        self.sampler_seed = seed
        self.sampler = None
        self.training_hidden = None

    def _extra_negatives(self, device):
        if self.sampler is None:
            generator = torch.Generator().manual_seed(self.sampler_seed)
            self.sampler = PopularitySampler(self.item_support, self.n_sample, self.sample_alpha, generator, device)
        return self.sampler.next()

    def _warn_prefix_batches(self):
        if not self.warned_prefix_batches:
            self.logger.warning(
                "GRU4RecPaper got RecBole's prefix-augmented batches, not session-parallel ones: it trains, but not "
                "as in the paper. Train with recbole_gru4rec.SessionParallelTrainer to get session-parallel batches."
            )
            self.warned_prefix_batches = True

    def predict(self, interaction):
        """Score of the item in ``ITEM_ID`` after each sequence (the pre-activation score; same ranking)."""
        output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        items = interaction[self.ITEM_ID]
        return (output * self.output_weights(items)).sum(1) + self.output_bias[items]

    def full_sort_predict(self, interaction):
        """Scores of all items after each sequence: (batch, n_items).

        The final activation is strictly increasing, so the pre-activation scores rank items the same way,
        without the ties that a saturated tanh would create.
        """
        output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return output @ self.output_weights.weight.T + self.output_bias
