"""Step-by-step parity: the author's GRU4Rec and GRU4RecPaper from the same weights on the same steps.

    python benchmarks/parity_steps.py --author_code=/tmp/author/gru4rec_pytorch.py --loss=BPR-max --epochs=1

The author's file (hidasib/GRU4Rec_PyTorch_Official, ``gru4rec_pytorch.py``) is read from a path outside this
repository, as in ``parity.py``, whose setting (shared embedding, batch 64, 512 negatives, lr 0.05) this uses.
Its model is built (its compatibility-mode initialisation), GRU4RecPaper gets a copy of those weights, and
both are trained on the author's session-parallel iterator and negative samples: the author's model by the
author's own loss and Adagrad, GRU4RecPaper by its loss and :class:`AdagradMomentum`. Every ``--every`` steps
the script prints both losses and the largest difference of each weight matrix; it stops at the first step
whose losses differ by more than ``--tolerance`` (relative), naming it. Float rounding alone grows the
differences slowly (about 1e-7 after 300 steps); a mechanism that differs shows as a jump.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import parity  # noqa: E402  (the author's file loader and the shared setting)
from recbole.data import create_dataset, data_preparation  # noqa: E402

from recbole_gru4rec import pipeline  # noqa: E402
from recbole_gru4rec.gru4rec_paper import GRU4RecPaper  # noqa: E402
from recbole_gru4rec.optimizers import AdagradMomentum  # noqa: E402

AUTHOR_LOSS = {"BPR-max": "bpr-max", "CE": "cross-entropy"}


def copy_weights(author_model, ours, to_ours):
    """The author's weights into GRU4RecPaper (the author's item index i is our item ``to_ours[i]``)."""
    with torch.no_grad():
        ours.output_weights.weight[to_ours] = author_model.Wy.weight
        ours.output_bias[to_ours] = author_model.By.weight[:, 0]
        cell = author_model.G[0]
        ours.input_layer.weight.copy_(cell.weight_ih)
        ours.input_layer.bias.copy_(cell.bias_ih)
        ours.hidden_layers[0].weight.copy_(cell.weight_hh)
        ours.hidden_layers[0].bias.copy_(cell.bias_hh)


def differences(author_model, ours, to_ours):
    """The largest absolute difference of each weight matrix."""
    cell = author_model.G[0]
    pairs = {"output weights": (ours.output_weights.weight[to_ours], author_model.Wy.weight),
             "output bias": (ours.output_bias[to_ours], author_model.By.weight[:, 0]),
             "W_ih": (ours.input_layer.weight, cell.weight_ih), "W_hh": (ours.hidden_layers[0].weight, cell.weight_hh),
             "b_ih": (ours.input_layer.bias, cell.bias_ih), "b_hh": (ours.hidden_layers[0].bias, cell.bias_hh)}
    return {name: float((a - b).abs().max()) for name, (a, b) in pairs.items()}


def main():
    """Train both implementations from the same weights on the same steps and print how far apart they are."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--author_code", required=True, help="path to the author's gru4rec_pytorch.py")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--loss", default="BPR-max", choices=sorted(AUTHOR_LOSS))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--every", type=int, default=200)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--loss_scale", default="batch_size", help="GRU4RecPaper's loss_scale (batch_size: the author's)")
    parser.add_argument("--remove_accidental_hits", default="False",
                        help="GRU4RecPaper's option; False counts target copies as negatives, as the author's code")
    args = parser.parse_args()
    if not os.path.isfile(args.author_code):
        raise SystemExit(f"parity_steps.py: --author_code={args.author_code}: no such file")
    author = parity.load_author_code(args.author_code)
    config = pipeline.build_config("GRU4RecPaper", args.dataset, overrides={
        **parity.COMMON_OURS, "loss_type": args.loss, "loss_scale": args.loss_scale, "state": "ERROR",
        "remove_accidental_hits": args.remove_accidental_hits.lower() == "true"})
    train, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    gru = author.GRU4Rec(**{**parity.COMMON_AUTHOR, "loss": AUTHOR_LOSS[args.loss]}, n_epochs=0, device=torch.device("cpu"))
    gru.fit(parity.training_frame(train._dataset))  # builds the author's model (compatibility mode) and iterator
    author_model, batch_size = gru.model, gru.batch_size
    ours = GRU4RecPaper(config, train._dataset)
    to_ours = torch.tensor(gru.data_iterator.itemidmap.index.values, dtype=torch.long)
    copy_weights(author_model, ours, to_ours)
    author_optimizer = author.IndexedAdagradM(author_model.parameters(), gru.learning_rate, gru.momentum)
    our_optimizer = AdagradMomentum(ours.parameters(), lr=gru.learning_rate, momentum=gru.momentum)
    for epoch in range(args.epochs):
        author_hidden = [torch.zeros(batch_size, gru.layers[0])]
        slots = {"ours": torch.zeros(1, batch_size, gru.layers[0]), "n_valid": batch_size}

        def reset(n_valid, finished, valid):  # the author's hidden-state reset, applied to both states
            with torch.no_grad():
                author_hidden[0][finished] = 0
                slots["ours"][:, torch.from_numpy(finished)] = 0
            if n_valid < len(valid):
                author_hidden[0] = author_hidden[0][valid]
                slots["ours"] = slots["ours"][:, torch.from_numpy(valid)]
            slots["n_valid"] = n_valid
            return False

        for step, (inputs, columns) in enumerate(gru.data_iterator(enable_neg_samples=True, reset_hook=reset)):
            author_hidden[0] = author_hidden[0].detach()
            author_model.zero_grad()
            scores = author_model.forward(inputs, author_hidden, columns, training=True)
            author_loss = gru.loss_function(scores, columns, slots["n_valid"]) / batch_size  # as the author's fit
            author_loss.backward()
            author_optimizer.step()
            ours.zero_grad()
            items, our_columns = to_ours[inputs.long()], to_ours[columns.long()]
            output, hidden = ours.session_step(items, slots["ours"])
            slots["ours"] = hidden.detach()
            loss = ours.loss_of_logits(ours.logits(output, our_columns), our_columns, our_columns[: len(items)])
            loss.backward()
            our_optimizer.step()
            apart = abs(loss.item() - author_loss.item()) > args.tolerance * abs(author_loss.item())
            if step % args.every == 0 or apart:
                print(f"epoch {epoch} step {step} ({len(items)} sessions): loss author {author_loss.item():.6f} "
                      f"ours {loss.item():.6f}; largest weight differences "
                      + ", ".join(f"{k} {v:.1e}" for k, v in differences(author_model, ours, to_ours).items()), flush=True)
            if apart:
                print(f"the losses part at epoch {epoch}, step {step}")
                return
        print(f"epoch {epoch}: {step + 1} steps, losses equal within {args.tolerance:g}; largest weight differences "
              + ", ".join(f"{k} {v:.1e}" for k, v in differences(author_model, ours, to_ours).items()))


if __name__ == "__main__":
    main()
