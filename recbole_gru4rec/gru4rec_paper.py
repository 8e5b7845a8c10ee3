"""GRU4RecPaper: GRU4Rec as in Hidasi et al., ICLR 2016, with the CIKM 2018 extensions, for RecBole.

Reads like RecBole's own model files: options and layers, initialisation, the network, then RecBole's contract.
The GRU cell is in gru_cell.py, the losses in losses.py; session-parallel training lives in ``steps/``.

The 1-of-N input is a row gather of the first layer's input weights: multiplying a one-hot vector by a
matrix selects one of its rows, so the gather computes the same function without building the vector.
"""

from logging import getLogger

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_gru4rec import options
from recbole_gru4rec.gru_cell import gru_cell
from recbole_gru4rec.layers import dropout, dropout_mask, gather, init_uniform_
from recbole_gru4rec.losses import sampled_loss
from recbole_gru4rec.sampling import ExtraNegatives
from recbole_gru4rec.session_data import CARRY_FIELD, user_sessions
from recbole_gru4rec.steps import activations


class GRU4RecPaper(SequentialRecommender):
    """GRU4Rec trained on session-parallel mini-batches with sampled ranking losses (ICLR 2016, CIKM 2018)."""

    input_type = InputType.POINTWISE
    reads_any_length = True  # recommend reads a user's whole history, not RecBole's window

    def __init__(self, config, dataset):
        options.fill_defaults(config)
        options.validate(config)
        super().__init__(config, dataset)

        self.hidden_size = config["hidden_size"]
        self.num_layers = config["num_layers"]
        self.reset_before = config["gru_cell"] == "paper"  # the reset gate on h before the recurrent matrix
        self.embedding_size = config["embedding_size"]
        self.constrained_embedding = config["constrained_embedding"]
        self.ff_hidden_size = config["ff_hidden_size"]
        self.loss_type = config["loss_type"]
        self.n_sample = config["n_sample"]
        self.bpreg = config["bpreg"]
        self.sample_alpha = config["sample_alpha"]
        self.logq = config["logq"]
        self.remove_accidental_hits = config["remove_accidental_hits"]
        # loss_scale batch_size: a step's summed loss over train_batch_size (every event weighs the same); rows: its mean.
        self.loss_divisor = config["train_batch_size"] if config["loss_scale"] == "batch_size" else None
        self.activation_name = activations.resolve(config["final_activation"], self.loss_type)
        self.sparse = options.sparse_gradients(config)
        self.dropout_input = config["dropout_prob_input"]
        self.dropout_hidden = config["dropout_prob_hidden"]
        # eval_history full: evaluation carries the state through each user's whole known history.
        self.known_histories = user_sessions(dataset) if config["eval_history"] == "full" else None
        self._warned_partial_histories = False

        hidden, gates = self.hidden_size, 3 * self.hidden_size
        self.output_size = self.ff_hidden_size or hidden
        self.output_weights = nn.Embedding(self.n_items, self.output_size, sparse=self.sparse)
        self.output_bias = nn.Parameter(torch.zeros(self.n_items))  # updated at the scored items only (sparse)
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

        item_support = user_sessions(dataset).item_support(self.n_items) if self.n_sample or self.logq else None
        self.negatives = ExtraNegatives(item_support, self.n_sample, self.sample_alpha, config["seed"] or 0)
        if self.logq > 0:  # log of the training counts, as the author's code (only differences matter in a softmax)
            self.register_buffer("log_popularity", item_support.double().clamp(min=1).log().float(), persistent=False)

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

    def _input_gate_table(self, events):
        """The first layer's input gates of every item, (n_items, 3H), where reading ``events`` events takes more
        input products than the catalog has items: evaluation with an embedding (no dropout); else None."""
        if self.training or self.item_embedding is None or events <= self.n_items:
            return None
        return self.input_layer(self.item_embedding.weight)

    def _step(self, items, hidden, gate_table=None):
        """Advance every GRU layer by one event. Returns the top layer's output and the new hidden states:
        each layer's output after dropout, which is also the state it carries (as in the author's code).
        ``gate_table``: the input gates of every item (_input_gate_table), read in place of the products."""
        gates = self._input_gates(items) if gate_table is None else gate_table[items]
        new_hidden = []
        for layer, hidden_layer in enumerate(self.hidden_layers):
            output = dropout(gru_cell(gates, hidden[layer], hidden_layer, self.reset_before), self.dropout_hidden,
                             self.training)
            new_hidden.append(output)
            if layer + 1 < self.num_layers:
                gates = self.upper_input_layers[layer](output)
        return output, torch.stack(new_hidden)

    def _head(self, output):
        return torch.tanh(self.feedforward(output)) if self.feedforward is not None else output

    def session_step(self, items, hidden):
        """One session-parallel step: the scored representation of each row and the new hidden states."""
        output, hidden = self._step(items, hidden)
        return self._head(output), hidden

    def forward(self, item_seq, item_seq_len):
        """The representation after reading each sequence from a zero state: (batch, output_size). Rows are
        read longest first, and each step runs only the rows whose sequence is still going (the top layer's
        state, its dropped output, stays as each row's sequence ends). In evaluation with an embedding, the input
        gates come from one product over the catalog where that is fewer products than one per event read."""
        lengths, order = item_seq_len.sort(descending=True)
        items = item_seq[order]
        hidden = item_seq.new_zeros((self.num_layers, len(item_seq), self.hidden_size), dtype=torch.float)
        gate_table = self._input_gate_table(int(lengths.sum()))
        for position in range(int(lengths[0])):
            going = int((lengths > position).sum())
            _, stepped = self._step(items[:going, position], hidden[:, :going], gate_table)
            hidden = torch.cat([stepped, hidden[:, going:]], dim=1)
        return self._head(hidden[-1][order.argsort()])

    def _evaluated_sequences(self, interaction):
        """The items each evaluation row is read from: RecBole's window, or the whole history (eval_history)."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        if self.known_histories is None:
            return item_seq, item_seq_len
        items, lengths, continued = self.known_histories.whole_histories(
            interaction[self.USER_ID], item_seq, item_seq_len, self.max_seq_length)
        cut = int((item_seq_len == self.max_seq_length).sum())
        if continued < cut and not self._warned_partial_histories:
            self._warned_partial_histories = True
            getLogger().warning(f"eval_history=full: {cut - continued} of {cut} rows cut at MAX_ITEM_LIST_LENGTH continue "
                                "no training sequence of their user; they are read from their window")
        return items, lengths

    def logits(self, output, items):
        """Pre-activation scores of every output row against each of the given items: (rows, len(items))."""
        return torch.addmm(gather(self.output_bias, items, self.sparse), output, self.output_weights(items).T)

    def scores(self, logits, columns):
        """The activated logits, minus logq * log Q for CE's logQ (CIKM 2018, as the author's code): Q is the popularity
        of the mini-batch's targets (the first ``len(logits)`` columns), popularity^sample_alpha of the extra ones."""
        scores = activations.apply(self.activation_name, logits)
        if self.logq > 0:
            correction = self.log_popularity[columns]
            correction[len(logits):] *= self.sample_alpha
            scores = scores - self.logq * correction
        return scores

    def negative_ids(self, columns, targets):
        """What tells a row's target from its negatives: the items (a copy of the target elsewhere is no negative),
        or, with ``remove_accidental_hits: False``, the column positions (only its own column, as the author's)."""
        if self.remove_accidental_hits:
            return columns, targets
        positions = torch.arange(len(columns), device=columns.device)
        return positions, positions[: len(targets)]

    def loss_of_logits(self, logits, columns, targets):
        """The sampled loss of pre-activation scores (rows: outputs, columns: ``columns``, row i's target in column i)."""
        scores = self.scores(logits, columns)
        column_ids, target_ids = self.negative_ids(columns, targets)
        negatives = column_ids[None, :] != target_ids[:, None]
        return sampled_loss(self.loss_type, scores.diagonal(), scores, negatives, self.bpreg, self.loss_divisor)

    # ---- RecBole's contract ----

    def calculate_loss(self, interaction):
        """The sampled loss of one of RecBole's prefix-augmented batches: its targets are each other's negatives,
        plus extra samples. (Session-parallel steps are trained by ``steps/``, through SessionParallelTrainer.)"""
        if CARRY_FIELD in interaction:
            raise TypeError("a session-parallel step carries its hidden state: train it with SessionParallelTrainer")
        output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        targets = interaction[self.POS_ITEM_ID]
        columns = self.negatives.columns(targets)
        return self.loss_of_logits(self.logits(output, columns), columns, targets)

    def predict(self, interaction):
        """Score of the item in ``ITEM_ID`` after each sequence (the pre-activation score; same ranking)."""
        output = self.forward(*self._evaluated_sequences(interaction))
        items = interaction[self.ITEM_ID]
        return (output * self.output_weights(items)).sum(1) + self.output_bias[items]

    def full_sort_predict(self, interaction):
        """Scores of all items after each sequence, (batch, n_items): pre-activation, as every final activation is
        non-decreasing: the same order, without the ties a saturated tanh (or relu's zero) would make."""
        output = self.forward(*self._evaluated_sequences(interaction))
        return output @ self.output_weights.weight.T + self.output_bias
