"""The final activations of the scores, by name: the one definition the model, the option check, the fused
step and the C++ step (``cpp_step.cpp`` numbers them as :data:`CPP_CODES`) all read.

The names are the author's Theano code's (``final_act``): ``linear``, ``tanh``, ``relu``, ``leaky-<slope>``,
``elu-<alpha>`` and ``selu-<lambda>-<alpha>``. (Its ``softmax`` and ``softmax_logit`` are the scores of its
cross-entropy variants; GRU4RecPaper's CE takes the softmax inside the loss, on ``linear`` scores.)
"""

import re

import torch
import torch.nn.functional as F

_NUMBER = r"(\d+(\.\d*)?|\.\d+)"
PATTERN = re.compile(rf"^(auto|tanh|linear|relu|leaky-{_NUMBER}|elu-{_NUMBER}|selu-{_NUMBER}-{_NUMBER})$")
ALLOWED = "auto, tanh, linear, relu, leaky-<slope>, elu-<alpha> or selu-<lambda>-<alpha>"
CPP_CODES = {"linear": 0, "tanh": 1, "elu": 2, "relu": 3, "leaky": 4, "selu": 5}
# ``auto``: each loss with the activation its paper trains it with: linear scores for the softmax of
# cross-entropy (CIKM 2018), tanh for TOP1 and BPR (ICLR 2016), ELU with alpha 0.5 for BPR-max (CIKM 2018; the
# author's PyTorch code's elu_param default). TOP1-max has no stated one: it keeps TOP1's tanh.
AUTO = {"CE": "linear", "TOP1": "tanh", "BPR": "tanh", "TOP1-max": "tanh", "BPR-max": "elu-0.5"}


def resolve(name, loss_type):
    """The activation ``name`` stands for with ``loss_type``: :data:`AUTO`'s choice for ``auto``, else itself."""
    return AUTO[loss_type] if name == "auto" else name


def parse(name):
    """(kind, alpha, scale) of an activation name: ``("elu", 0.5, 1.0)``, ``("selu", alpha, lambda)``,
    ``("leaky", slope, 1.0)``; alpha 0 and scale 1 where the kind has none."""
    if not isinstance(name, str) or not PATTERN.match(name) or name == "auto":
        raise ValueError(f"final_activation={name!r} is not {ALLOWED}")
    kind, *numbers = name.split("-")
    if kind == "selu":
        scale, alpha = map(float, numbers)
        return kind, alpha, scale
    return kind, float(numbers[0]) if numbers else 0.0, 1.0


def apply(name, logits):
    """The activation ``name`` of ``logits``."""
    kind, alpha, scale = parse(name)
    if kind == "tanh":
        return torch.tanh(logits)
    if kind == "relu":
        return torch.relu(logits)
    if kind == "leaky":
        return F.leaky_relu(logits, alpha)
    if kind in ("elu", "selu"):  # selu: lambda * elu(x, alpha)
        return F.elu(logits, alpha) * scale
    return logits


def slope(name, logits, scores):
    """The derivative of the activation ``name`` at ``logits``, given its values ``scores`` there."""
    kind, alpha, scale = parse(name)
    if kind == "tanh":
        return 1 - scores * scores
    if kind == "relu":
        return (logits > 0).to(logits.dtype)
    if kind == "leaky":
        return torch.where(logits > 0, 1.0, alpha)
    if kind in ("elu", "selu"):  # below 0: d/dx lambda * alpha * (e^x - 1) = score + lambda * alpha
        return torch.where(logits > 0, scale, scores + scale * alpha)
    return torch.ones_like(logits)
