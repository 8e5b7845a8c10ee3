"""The final activations of the scores, by name: the one definition the model, the option check, the fused
step and the C++ step (``cpp_step.cpp`` numbers them as :data:`CPP_CODES`) all read."""

import re

import torch
import torch.nn.functional as F

PATTERN = re.compile(r"^(auto|tanh|linear|elu-(\d+(\.\d*)?|\.\d+))$")
ALLOWED = "auto, tanh, linear or elu-<alpha>"
CPP_CODES = {"linear": 0, "tanh": 1, "elu": 2}
# ``auto``: each loss with the activation its paper trains it with: linear scores for the softmax of
# cross-entropy (CIKM 2018), tanh for TOP1 and BPR (ICLR 2016), ELU with alpha 0.5 for BPR-max (CIKM 2018; the
# author's PyTorch code's elu_param default). TOP1-max has no stated one: it keeps TOP1's tanh.
AUTO = {"CE": "linear", "TOP1": "tanh", "BPR": "tanh", "TOP1-max": "tanh", "BPR-max": "elu-0.5"}


def resolve(name, loss_type):
    """The activation ``name`` stands for with ``loss_type``: :data:`AUTO`'s choice for ``auto``, else itself."""
    return AUTO[loss_type] if name == "auto" else name


def parse(name):
    """(kind, alpha) of an activation name: ``("tanh", 0.0)``, ``("linear", 0.0)`` or ``("elu", alpha)``."""
    if not isinstance(name, str) or not PATTERN.match(name) or name == "auto":
        raise ValueError(f"final_activation={name!r} is not {ALLOWED}")
    kind, _, alpha = name.partition("-")
    return kind, float(alpha or 0.0)


def apply(name, logits):
    """The activation ``name`` of ``logits``."""
    kind, alpha = parse(name)
    if kind == "tanh":
        return torch.tanh(logits)
    return logits if kind == "linear" else F.elu(logits, alpha)


def slope(name, logits, scores):
    """The derivative of the activation ``name`` at ``logits``, given its values ``scores`` there."""
    kind, alpha = parse(name)
    if kind == "tanh":
        return 1 - scores * scores
    return torch.ones_like(logits) if kind == "linear" else torch.where(logits > 0, 1.0, scores + alpha)
