"""Ranking losses over a sampled score matrix (Hidasi et al. 2016; Hidasi & Karatzoglou 2018).

Every loss takes the same three tensors:

* ``positive`` (B,): the score of each row's target item;
* ``scores`` (B, K): the scores of the K sampled columns (the mini-batch targets, then the extra samples);
* ``negatives`` (B, K) bool: which columns count as negatives for each row. A column holding the row's own
  target item (its diagonal, or the same item sampled again) is not a negative.

Rows without any negative carry no ranking signal and are left out (see :func:`sampled_loss`). A step's loss is
the sum over its rows divided by ``divisor`` (the batch size, as the author's code: every training event weighs
the same, also in an epoch's last, narrower steps), or, without one, the mean over its rows.
Every formula is written in the log domain or with saturating functions, so scores of any size stay finite.
"""

import torch
import torch.nn.functional as F

LOSS_TYPES = ("TOP1", "BPR", "TOP1-max", "BPR-max", "CE")


def _masked_mean(values, mask):
    return (values * mask).sum(1) / mask.sum(1)


def _masked_log_softmax(scores, mask):
    return torch.log_softmax(scores.masked_fill(~mask, float("-inf")), dim=1)


def top1(positive, scores, negatives):
    """TOP1 (ICLR 2016, eq. 4): mean over negatives of sigmoid(r_j - r_i) + sigmoid(r_j^2)."""
    per_pair = torch.sigmoid(scores - positive[:, None]) + torch.sigmoid(scores**2)
    return _masked_mean(per_pair, negatives)


def bpr(positive, scores, negatives):
    """BPR (ICLR 2016, eq. 3): mean over negatives of -log sigmoid(r_i - r_j)."""
    return _masked_mean(-F.logsigmoid(positive[:, None] - scores), negatives)


def top1_max(positive, scores, negatives):
    """TOP1-max (CIKM 2018): TOP1 with each negative weighted by its softmax score among the negatives."""
    weights = _masked_log_softmax(scores, negatives).exp()
    per_pair = torch.sigmoid(scores - positive[:, None]) + torch.sigmoid(scores**2)
    return (weights * per_pair).sum(1)


def bpr_max(positive, scores, negatives, bpreg):
    """BPR-max (CIKM 2018): -log sum_j s_j sigmoid(r_i - r_j) + bpreg * sum_j s_j r_j^2, s = softmax over negatives."""
    log_weights = _masked_log_softmax(scores, negatives)
    ranking = -torch.logsumexp(log_weights + F.logsigmoid(positive[:, None] - scores), dim=1)
    regularizer = (log_weights.exp() * scores**2).sum(1)
    return ranking + bpreg * regularizer


def cross_entropy(positive, scores, negatives):
    """Sampled softmax cross-entropy: -log softmax of the target among itself and its negatives."""
    logits = torch.cat([positive[:, None], scores.masked_fill(~negatives, float("-inf"))], dim=1)
    return torch.logsumexp(logits, dim=1) - positive


def _row_weight(has_negative, divisor, dtype):
    """Each row's weight in a step's loss: 1 / divisor, or 1 / the number of rows with a negative."""
    rows = has_negative.to(dtype)
    return rows / (divisor if divisor else rows.sum().clamp(min=1))


def cross_entropy_with_gradient(scores, columns, targets, divisor=None):
    """``sampled_loss("CE", ...)`` of a score matrix whose row i has its target in column i, and its gradient
    with respect to ``scores``, written out: a softmax over each row's target and negatives, minus the target.

    ``columns`` (K,) are the items of the columns, ``targets`` (B,) those of the rows; ``divisor`` as in
    :func:`sampled_loss`. Returns (loss, gradient).
    """
    # Columns that hold a row's own target, other than its diagonal, are left out of its softmax.
    repeats = columns[None, :] == targets[:, None]
    repeats.diagonal().fill_(False)
    log_probabilities = torch.log_softmax(scores.masked_fill(repeats, float("-inf")), dim=1)
    has_negative = repeats.sum(1) < scores.shape[1] - 1
    weight = _row_weight(has_negative, divisor, scores.dtype)
    loss = -(log_probabilities.diagonal() * weight).sum()
    gradient = log_probabilities.exp_()
    gradient.diagonal().sub_(1.0)
    return loss, gradient.mul_(weight[:, None])


def pairwise_with_gradient(loss_type, scores, columns, targets, divisor=None):
    """``sampled_loss("TOP1" or "BPR", ...)`` of a score matrix whose row i has its target in column i, and its
    gradient with respect to ``scores``, written out. Returns (loss, gradient)."""
    negatives = columns[None, :] != targets[:, None]
    counts = negatives.sum(1)
    has_negative = counts > 0
    # Each negative pair's weight in the loss: the mean over a row's negatives, times the row's weight.
    row_weight = _row_weight(has_negative, divisor, scores.dtype) / counts.clamp(min=1)
    pair_weight = negatives * row_weight[:, None]
    difference = scores - scores.diagonal()[:, None]
    ranking = torch.sigmoid(difference)
    if loss_type == "TOP1":
        regularizer = torch.sigmoid(scores * scores)
        loss = ((ranking + regularizer) * pair_weight).sum()
        ranking_grad = ranking.mul_(1 - ranking).mul_(pair_weight)
        gradient = regularizer.mul_(1 - regularizer).mul_(scores).mul_(2 * pair_weight).add_(ranking_grad)
    elif loss_type == "BPR":
        loss = (F.softplus(difference) * pair_weight).sum()  # -log sigmoid(r_i - r_j)
        ranking_grad = ranking.mul_(pair_weight)
        gradient = ranking_grad.clone()
    else:
        raise ValueError(f"loss_type={loss_type!r} is not TOP1 or BPR")
    gradient.diagonal().sub_(ranking_grad.sum(1))  # the target's score is the minuend of every difference
    return loss, gradient


def softmax_weighted_with_gradient(loss_type, scores, columns, targets, bpreg=0.0, divisor=None):
    """``sampled_loss("TOP1-max" or "BPR-max", ...)`` of a score matrix whose row i has its target in column i,
    and its gradient with respect to ``scores``, written out. Returns (loss, gradient).

    With s the softmax over a row's negatives, r_t its target's score and sigma(x) the sigmoid: BPR-max's
    gradient is s_j - q_j sigma(r_t - r_j) + bpreg s_j (r_j^2 - R + 2 r_j) on negative j, where q is the
    posterior s_j sigma(r_t - r_j) / sum_k s_k sigma(r_t - r_k) and R = sum_k s_k r_k^2, and minus sum_j q_j
    sigma(r_j - r_t) on the target; TOP1-max's is s_j (p_j - sum_k s_k p_k + rho_j (1 - rho_j)
    + 2 r_j g_j (1 - g_j)) with rho_j = sigma(r_j - r_t), g_j = sigma(r_j^2), p_j = rho_j + g_j, and minus
    sum_j s_j rho_j (1 - rho_j) on the target.
    """
    negatives = columns[None, :] != targets[:, None]
    has_negative = negatives.any(1)
    row_weight = _row_weight(has_negative, divisor, scores.dtype)
    # A row without negatives is computed over every column as a stand-in and then weighted 0 (sampled_loss).
    negatives |= ~has_negative[:, None]
    log_weights = torch.log_softmax(scores.masked_fill(~negatives, float("-inf")), dim=1)
    weights = log_weights.exp()
    difference = scores - scores.diagonal()[:, None]
    if loss_type == "BPR-max":
        log_ranking = F.logsigmoid(-difference)  # log sigma(r_t - r_j)
        joint = log_weights + log_ranking
        log_total = torch.logsumexp(joint, dim=1)
        posterior = (joint - log_total[:, None]).exp_()
        ranking = log_ranking.exp_()
        square = scores * scores
        regularizer = (weights * square).sum(1)
        per_row = bpreg * regularizer - log_total
        gradient = weights - posterior * ranking + bpreg * weights * (square - regularizer[:, None] + 2 * scores)
        target_gradient = (posterior * (1 - ranking)).sum(1)
    elif loss_type == "TOP1-max":
        ranking = torch.sigmoid(difference)
        squashed = torch.sigmoid(scores * scores)
        per_pair = ranking + squashed
        per_row = (weights * per_pair).sum(1)
        ranking_slope = ranking * (1 - ranking)
        gradient = weights * (per_pair - per_row[:, None] + ranking_slope + 2 * scores * squashed * (1 - squashed))
        target_gradient = (weights * ranking_slope).sum(1)
    else:
        raise ValueError(f"loss_type={loss_type!r} is not TOP1-max or BPR-max")
    gradient.diagonal().sub_(target_gradient)
    return (per_row * row_weight).sum(), gradient.mul_(row_weight[:, None])


def sampled_loss(loss_type, positive, scores, negatives, bpreg=0.0, divisor=None):
    """The loss of ``loss_type`` (one of :data:`LOSS_TYPES`) summed over the rows that have at least one negative,
    divided by ``divisor``; without one, their mean."""
    has_negative = negatives.any(1)
    # A row without negatives gets every column as a stand-in mask, so its (discarded) value stays finite;
    # this keeps the step free of host/device synchronisation.
    negatives = negatives | ~has_negative[:, None]
    if loss_type == "TOP1":
        per_row = top1(positive, scores, negatives)
    elif loss_type == "BPR":
        per_row = bpr(positive, scores, negatives)
    elif loss_type == "TOP1-max":
        per_row = top1_max(positive, scores, negatives)
    elif loss_type == "BPR-max":
        per_row = bpr_max(positive, scores, negatives, bpreg)
    elif loss_type == "CE":
        per_row = cross_entropy(positive, scores, negatives)
    else:
        raise ValueError(f"loss_type={loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
    return (per_row * _row_weight(has_negative, divisor, per_row.dtype)).sum()
