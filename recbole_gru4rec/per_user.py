"""Per-user test metrics: recorded during RecBole's evaluation, saved beside a result, compared by a paired test.

A leaderboard row's mean NDCG@10 says little on its own when two models differ by less than the seed moves
them; the per-user values let two rows be compared user by user (:func:`paired_test`).
"""

import inspect
import math
import os

import numpy as np
from recbole.evaluator import Collector, Evaluator
from recbole.evaluator.base_metric import TopkMetric
from recbole.evaluator.register import metrics_dict

USERS = "rec.users"


class UserRecordingCollector(Collector):
    """RecBole's collector that also keeps, row by row, the user each evaluated row belongs to."""

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        """RecBole's collection, plus the batch's user ids (the rows of ``rec.topk``)."""
        super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        if self.register.need("rec.topk"):
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
