"""Shared helpers: small RecBole datasets written by hand, and RecBole objects built from them."""

import os
import random

import pytest
from recbole.data import create_dataset, data_preparation

from recbole_gru4rec import pipeline

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


@pytest.fixture(scope="session")
def ml100k():
    """GRU4RecPaper's config and loaders on RecBole's bundled ml-100k (built once per test session)."""
    return build("GRU4RecPaper", "ml-100k")
