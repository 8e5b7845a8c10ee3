"""RecBole's evaluation with two additions, for every model: a tie policy and per-user results.

* ``eval_ties``: where a target goes among items with exactly its score. ``recbole`` (default): wherever
  ``torch.topk`` puts it (RecBole's own behaviour); ``optimistic``: before every tied item (the author's
  ``standard``: rank = 1 + number of items scored higher); ``conservative``: after them (the author's default);
  ``median``: the middle of the tied positions (the earlier middle when their number is even; the author's
  code uses the fractional mean rank there).
* Per-user test metrics: recorded during evaluation, saved beside a result (:func:`save`) and compared
  between runs by a paired test (:func:`paired_test`). A leaderboard row's mean NDCG@10 says little on its own
  when two models differ by less than the seed moves them.

:func:`~recbole_gru4rec.registry.register` makes RecBole's trainers build these collector and evaluator.
"""

import inspect
import math
import os

import numpy as np
import torch
from recbole.evaluator import Collector, Evaluator
from recbole.evaluator.base_metric import TopkMetric
from recbole.evaluator.register import metrics_dict

from recbole_gru4rec.errors import UsageError

USERS = "rec.users"
TIE_POLICIES = ("recbole", "optimistic", "conservative", "median")


def tie_policy(config):
    """The config's ``eval_ties``, checked: a one-line error names a bad value or a split it cannot serve."""
    policy = config["eval_ties"] if "eval_ties" in config and config["eval_ties"] is not None else "recbole"
    if policy not in TIE_POLICIES:
        raise UsageError(f"eval_ties={policy!r} is not allowed: expected one of {', '.join(TIE_POLICIES)}")
    split = (config["eval_args"] or {}).get("split") or {}
    if policy != "recbole" and "LS" not in split:
        raise UsageError(f"eval_ties={policy} needs a leave-one-out split (eval_args: split: {{LS: ...}}), "
                         f"one target per evaluated row; this config splits by {split}")
    return policy


def hits_by_policy(scores, positive_u, positive_i, max_k, policy):
    """RecBole's ``rec.topk`` rows (a 1 at the target's position if within ``max_k``, then the number of
    targets, 1) with the target placed among its ties as ``policy`` says."""
    rows = scores.shape[0]
    if len(positive_u) != rows or torch.bincount(positive_u, minlength=rows).ne(1).any():
        raise ValueError(f"eval_ties={policy} needs one target per evaluated row: {len(positive_u)} targets for {rows} rows")
    target = torch.empty(rows, dtype=scores.dtype, device=scores.device)
    target[positive_u] = scores[positive_u, positive_i]
    higher = (scores > target[:, None]).sum(1)
    tied_others = (scores == target[:, None]).sum(1) - 1
    position = higher + {"optimistic": 0, "conservative": tied_others, "median": tied_others // 2}[policy]
    hits = torch.zeros(rows, max_k + 1, dtype=torch.int, device=scores.device)
    inside = position < max_k
    hits[inside.nonzero().squeeze(1), position[inside]] = 1
    hits[:, max_k] = 1
    return hits


class UserRecordingCollector(Collector):
    """RecBole's collector, keeping the user of each evaluated row and placing targets among ties by ``eval_ties``."""

    def __init__(self, config):
        self.tie_policy = tie_policy(config)
        super().__init__(config)

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        """RecBole's collection, with the policy's ``rec.topk`` rows and the batch's user ids."""
        super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        if self.register.need("rec.topk"):
            if self.tie_policy != "recbole":
                # RecBole appended this batch's rows last; they are replaced in place (no public setter exists).
                rows = self.data_struct._data_dict["rec.topk"]
                rows[-len(scores_tensor):] = hits_by_policy(scores_tensor, positive_u, positive_i, max(self.topk), self.tie_policy)
            self.data_struct.update_tensor(USERS, interaction[self.config["USER_ID_FIELD"]])

    def get_data_struct(self):
        """RecBole's struct of one evaluation; the user ids start afresh for the next one, as its rows do."""
        struct = super().get_data_struct()
        if USERS in self.data_struct:
            del self.data_struct[USERS]
        return struct


class RecordingEvaluator(Evaluator):
    """RecBole's evaluator that keeps the struct of its latest evaluation (``last_struct``)."""

    last_struct = None

    def evaluate(self, dataobject):
        """RecBole's averaged metrics; the struct they came from is kept."""
        self.last_struct = dataobject
        return super().evaluate(dataobject)


def metrics_of_users(struct, config):
    """Each user's value of every top-k metric in ``config['metrics']``: ``{'ndcg@10': array, ...}``, in the
    rows' order; their means are RecBole's reported values."""
    values = {}
    for name in (metric.lower() for metric in config["metrics"]):
        metric = metrics_dict[name](config)
        if not isinstance(metric, TopkMetric):
            continue
        pos_index, pos_len = metric.used_info(struct)
        wants_lengths = len(inspect.signature(metric.metric_info).parameters) == 2  # Hit, MRR, Precision: no
        per_k = metric.metric_info(pos_index, pos_len) if wants_lengths else metric.metric_info(pos_index)
        values.update({f"{name}@{k}": per_k[:, k - 1] for k in config["topk"]})
    return values


def save(path, users, metrics):
    """Write users and their metrics to ``path`` (compressed ``.npz``) through a temporary file and a rename."""
    partial = f"{path}.partial"
    with open(partial, "wb") as f:
        np.savez_compressed(f, users=np.asarray(users, dtype=str), **{name: np.asarray(v, dtype=np.float32) for name, v in metrics.items()})
    os.replace(partial, path)


def load(path):
    """``(users, {metric: values})`` as :func:`save` wrote them."""
    with np.load(path) as saved:
        return saved["users"], {name: saved[name] for name in saved.files if name != "users"}


def seed_mean(runs, metric):
    """Each user's ``metric`` averaged over runs (``(users, metrics)`` pairs of one model), users sorted."""
    tables = [dict(zip(users, metrics[metric])) for users, metrics in runs]
    users = sorted(tables[0])
    if any(sorted(table) != users for table in tables):
        raise ValueError(f"the runs do not hold the same users for {metric}")
    return users, np.mean([[table[user] for user in users] for table in tables], axis=0)


def paired_test(a, b):
    """Paired t-test of ``a`` against ``b`` (one value per user, same order): the difference of the means
    (a − b), its standard error and the two-sided p-value."""
    from scipy import stats

    difference = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    standard_error = float(difference.std(ddof=1) / math.sqrt(len(difference)))
    if standard_error == 0:  # every user differs by the same amount: no spread to test against
        p_value = 1.0 if difference.mean() == 0 else 0.0
    else:
        p_value = float(stats.ttest_rel(a, b).pvalue)
    return {"difference": float(difference.mean()), "standard_error": standard_error, "p_value": p_value,
            "users": len(difference)}
