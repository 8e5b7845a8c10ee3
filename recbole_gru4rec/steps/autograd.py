"""The reference step: the paper's network and sampled loss through autograd (the trainer then calls
``backward`` and the optimizer, as RecBole's trainer does). The fused and C++ steps are tested against it."""

from recbole_gru4rec.session_data import INPUT_FIELD


def session_loss(model, state, interaction):
    """The sampled loss of one session-parallel step of ``model``; the new hidden states go to ``state``."""
    output, hidden = model.session_step(interaction[INPUT_FIELD], state.carried(interaction))
    state.hidden = hidden.detach()
    targets = interaction[model.POS_ITEM_ID]
    columns = model.negatives.columns(targets)
    return model.loss_of_logits(model.logits(output, columns), columns, targets)
