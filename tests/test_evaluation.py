"""The tie policy and the per-user results of RecBole's evaluation (recbole_gru4rec/evaluation.py)."""

import json
import math

import pytest
import torch

from recbole_gru4rec import evaluation, pipeline
from recbole_gru4rec.cli import main
from recbole_gru4rec.errors import UsageError

# One row per user, five items; item 0 is padding (-inf). Row 0: target item 2 ties with items 1 and 3,
# one item (4) is higher. Row 1: target item 1 ties with nobody, two items higher. Row 2: target 4 ties with
# all three others.
SCORES = torch.tensor([[-math.inf, 0.5, 0.5, 0.5, 0.9],
                       [-math.inf, 0.2, 0.3, 0.4, 0.1],
                       [-math.inf, 0.7, 0.7, 0.7, 0.7]])
TARGETS = torch.tensor([2, 1, 4])
# 1-based ranks by hand, per policy: optimistic = 1 + higher; conservative = higher + tied (itself included);
# median = the middle tied position (the earlier one of two).
HAND_RANKS = {"optimistic": [2, 3, 1], "conservative": [4, 3, 4], "median": [3, 3, 2]}


@pytest.mark.parametrize("policy", ["optimistic", "conservative", "median"])
def test_targets_are_placed_among_their_ties_as_the_policy_says(policy):
    hits = evaluation.hits_by_policy(SCORES, torch.arange(3), TARGETS, 3, policy)
    ranks = [row[:3].nonzero().flatten().tolist() for row in hits]
    assert ranks == [[rank - 1] if rank <= 3 else [] for rank in HAND_RANKS[policy]]
    assert hits[:, 3].tolist() == [1, 1, 1]


@pytest.mark.parametrize("policy", ["optimistic", "conservative", "median"])
def test_recbole_metrics_follow_the_policy(policy):
    config = pipeline.build_config("Pop", "ml-100k", overrides={"eval_ties": policy, "topk": [1, 3], "valid_metric": "NDCG@3", "state": "ERROR"})
    collector = evaluation.UserRecordingCollector(config)
    users = {"user_id": torch.tensor([7, 8, 9])}
    collector.eval_batch_collect(SCORES, users, torch.arange(3), TARGETS)
    struct = collector.get_data_struct()
    result = evaluation.RecordingEvaluator(config).evaluate(struct)
    ranks = torch.tensor(HAND_RANKS[policy], dtype=torch.double)
    for k in (1, 3):
        hit = (ranks <= k).double()
        assert result[f"recall@{k}"] == pytest.approx(hit.mean().item(), abs=1e-4)
        assert result[f"mrr@{k}"] == pytest.approx((hit / ranks).mean().item(), abs=1e-4)
        assert result[f"ndcg@{k}"] == pytest.approx((hit / torch.log2(ranks + 1)).mean().item(), abs=1e-4)
    assert struct[evaluation.USERS].tolist() == [7, 8, 9]
    assert evaluation.USERS not in collector.data_struct  # the next evaluation starts afresh


@pytest.mark.parametrize("overrides,message", [
    ({"eval_ties": "random"}, "eval_ties='random' is not allowed: expected one of recbole, optimistic, conservative, median"),
    ({"eval_ties": "median", "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "group_by": "user", "mode": "full"}},
     "eval_ties=median needs a leave-one-out split"),
])
def test_bad_tie_policies_are_refused_before_anything_runs(overrides, message):
    with pytest.raises(UsageError, match=message):
        pipeline.build_config("Pop", "ml-100k", overrides=overrides)


def test_the_policies_order_a_tie_heavy_models_results(tmp_path, capsys):
    # Pop scores every item by its count: many items tie. Optimistic >= median >= conservative in every metric,
    # and RecBole's own top-k order lies between the two extremes.
    results = {}
    for policy in ("recbole", "optimistic", "median", "conservative"):
        path = tmp_path / f"{policy}.json"
        assert main(["--model=Pop", "--epochs=1", "--saved=false", "--state=ERROR", f"--eval_ties={policy}",
                     f"--result_file={path}"]) == 0
        results[policy] = json.loads(path.read_text())
    capsys.readouterr()
    assert "eval_ties" not in results["recbole"]["config"] and results["median"]["config"]["eval_ties"] == "median"
    tests = {policy: result["test_result"] for policy, result in results.items()}
    for metric in tests["recbole"]:
        assert tests["optimistic"][metric] >= tests["median"][metric] >= tests["conservative"][metric], metric
        assert tests["optimistic"][metric] >= tests["recbole"][metric] >= tests["conservative"][metric], metric
    assert tests["optimistic"]["recall@20"] > tests["conservative"]["recall@20"]  # ml-100k's Pop has ties that matter
