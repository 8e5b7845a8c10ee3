"""Every GRU4RecPaper config file shipped in configs/ passes option validation and arrives in RecBole's Config as written."""

import glob
import os

import pytest
import yaml

from recbole_gru4rec import options, pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "GRU4RecPaper*.yaml")))
OVERLAYS = [os.path.join(REPO, "configs", name) for name in ("eval-history-full.yaml", "whole-history-sessions.yaml")]


def test_the_shipped_settings_are_found():
    names = {os.path.basename(path) for path in MODEL_FILES}
    assert {"GRU4RecPaper-tuned-ml-100k.yaml", "GRU4RecPaper-tuned-ml-1m-u2999.yaml"} <= names


@pytest.mark.parametrize("path", MODEL_FILES + OVERLAYS, ids=os.path.basename)
def test_config_file_is_valid_and_read_as_written(path):
    with open(path, encoding="utf-8") as f:
        written = yaml.safe_load(f)
    config = pipeline.build_config("GRU4RecPaper", "ml-100k", [path])
    ours = {key: value for key, value in written.items() if key in options.CHECKS}  # RecBole rewrites some of its own
    assert ours, f"{path} sets no GRU4RecPaper option"
    for key, value in ours.items():
        assert config[key] == value, f"{os.path.basename(path)}: {key}={config[key]!r}, the file says {value!r}"
