"""Shared helpers: small RecBole datasets written by hand, and RecBole objects built from them."""

import copy
import math
import os
import random
import shutil
import subprocess
import sys
import time

import pytest
import torch
from recbole.data import create_dataset, data_preparation

from recbole_gru4rec import GRU4RecPaper, pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_inter(folder, name, rows, header="user_id:token\titem_id:token\ttimestamp:float"):
    """Write ``rows`` (tuples) as the RecBole atomic file ``folder/name/name.inter``; returns ``folder``."""
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    with open(os.path.join(folder, name, f"{name}.inter"), "w", encoding="utf-8") as f:
        f.write(header + "\n")
        for row in rows:
            f.write("\t".join(str(value) for value in row) + "\n")
    return str(folder)


def sessions_dataset_rows(sessions):
    """(user, item, timestamp) rows for ``{user: [items in time order]}``, with distinct timestamps per user."""
    rows = []
    for user, items in sessions.items():
        start = 1000 * int(user)
        rows += [(user, item, start + position) for position, item in enumerate(items)]
    return rows


def random_sessions(seed, users, items, min_length, max_length):
    """``{user: [item, ...]}`` for users 1..``users``, items drawn from 1..``items``, repeats allowed."""
    rng = random.Random(seed)
    return {u: [rng.randint(1, items) for _ in range(rng.randint(min_length, max_length))] for u in range(1, users + 1)}


def random_sessions_folder(tmp_path_factory, name, seed, **shape):
    """A folder holding dataset ``name`` of :func:`random_sessions` ``(seed, **shape)``; for module fixtures."""
    folder = tmp_path_factory.mktemp(name)
    return write_inter(folder, name, sessions_dataset_rows(random_sessions(seed, **shape)))


def build(model, dataset, data_path=None, **overrides):
    """Config, dataset and RecBole's three loaders for ``model`` on ``dataset``, quietly."""
    settings = {"show_progress": False, "state": "ERROR", "checkpoint_dir": os.path.join(REPO, "saved", "tests")}
    if data_path is not None:
        settings["data_path"] = data_path
    settings.update(overrides)
    config = pipeline.build_config(model, dataset, overrides=settings)
    data = create_dataset(config)
    train, valid, test = data_preparation(config, data)
    return config, data, train, valid, test


def metrics_from_scores(model, test, k=10):
    """Recall@k, MRR@k and NDCG@k of each test user's one target, from the model's scores of every item.

    A target's rank is 1 + the number of items scored strictly higher (padding excluded); ties are rare with
    float scores and counted in the target's favour.
    """
    rows = test._dataset.inter_feat
    with torch.no_grad():
        scores = model.full_sort_predict(rows)
    scores[:, 0] = -math.inf
    target_scores = scores.gather(1, rows[model.ITEM_ID][:, None])
    ranks = 1 + (scores > target_scores).sum(1)
    hit = (ranks <= k).double()
    return {f"recall@{k}": hit.mean().item(), f"mrr@{k}": (hit / ranks).mean().item(),
            f"ndcg@{k}": (hit / torch.log2(ranks + 1.0)).mean().item()}


def model_with(ml100k, **options):
    """A GRU4RecPaper on the ml100k fixture's training split with ``options`` changed, from seed 0."""
    config, _, train, _, _ = ml100k
    config = copy.deepcopy(config)
    for key, value in options.items():
        config[key] = value
    torch.manual_seed(0)
    return GRU4RecPaper(config, train._dataset)


@pytest.fixture(scope="session")
def ml100k():
    """GRU4RecPaper's config and loaders on RecBole's bundled ml-100k (built once per test session)."""
    return build("GRU4RecPaper", "ml-100k")


@pytest.fixture
def ray_cluster():
    """A local Ray cluster of 2 CPUs, started with Ray's own command line and stopped after the test; yields the
    environment for the commands that join it (``--ray_address=auto``)."""
    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    subprocess.run([ray, "start", "--head", "--num-cpus=2", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                    "--disable-usage-stats"],
                   check=True, capture_output=True, env=env, timeout=120)
    try:
        yield env
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env, timeout=120)


def wait_for_epoch(folder, epoch, process, timeout=120):
    """Wait until a last checkpoint in ``folder`` records ``epoch``; returns its path."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be stopped"
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            if name.endswith("-last.pth"):
                path = os.path.join(folder, name)
                try:
                    if torch.load(path, weights_only=True)["epoch"] >= epoch:
                        return path
                except (OSError, RuntimeError, EOFError):
                    pass  # replaced while being read
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of epoch {epoch} in {timeout} s")
