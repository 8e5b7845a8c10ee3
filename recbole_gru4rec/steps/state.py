"""What a session-parallel epoch carries from one step to the next: the one definition every step backend uses."""

from recbole_gru4rec.session_data import CARRY_FIELD, ROWS_FIELD


class SessionState:
    """The hidden state of every slot after the latest step of ``model`` (None before an epoch's first step)."""

    def __init__(self, model):
        self.model = model
        self.hidden = None  # (num_layers, rows, hidden_size), detached

    def restart(self, seed):
        """A new epoch: nothing carried over, and the model's extra negatives drawn anew from ``seed``."""
        self.hidden = None
        self.model.negatives.reseed(seed)

    def carried(self, interaction):
        """The hidden states a step starts from: carried row by row, zero where a session starts."""
        carry = interaction[CARRY_FIELD]
        hidden = self.hidden
        if ROWS_FIELD in interaction:
            hidden = hidden[:, interaction[ROWS_FIELD]]
        elif hidden is None or hidden.shape[1] != len(carry):
            # A new epoch: its first step starts a session in every row, so the old state is never used.
            return carry.new_zeros(self.model.num_layers, len(carry), self.model.hidden_size)
        return hidden * carry[None, :, None]

    def start_of_epoch(self, rows):
        """The state an epoch whose first step has ``rows`` rows starts from (None: zeros, see :meth:`carried`)."""
        return self.hidden if self.hidden is not None and self.hidden.shape[1] == rows else None
