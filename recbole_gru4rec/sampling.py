"""Extra negative items drawn by popularity, shared by a whole mini-batch (Hidasi & Karatzoglou 2018, sec. 3.1)."""

import torch


def searchsorted_right(cumulative, uniform):
    """For each draw in ``uniform``, the number of entries of ``cumulative`` at or below it: the drawn item."""
    return torch.searchsorted(cumulative, uniform, right=True)


class PopularitySampler:
    """Draws ``n_sample`` items per step with probability proportional to ``support ** alpha``.

    Items are drawn in blocks of many steps at once (one ``searchsorted`` over the cumulative distribution),
    so a training step only slices a ready tensor. Items with zero support (the padding id 0 included) are
    never drawn. ``search`` finds the items: :func:`searchsorted_right` or a function giving the same answers.
    """

    def __init__(self, item_support, n_sample, alpha, generator, device, steps_per_block=256, search=searchsorted_right):
        weights = item_support.double().pow(alpha) * (item_support > 0)
        if not bool((weights > 0).any()):
            raise ValueError("cannot sample negatives: no item has a positive training support")
        self.cumulative = (weights.cumsum(0) / weights.sum()).to(device)
        self.last_drawable = int(weights.nonzero().max())
        self.n_sample = n_sample
        self.generator = generator
        self.device = device
        self.search = search
        self.block_size = n_sample * steps_per_block
        self.block = torch.empty(0, dtype=torch.long, device=device)
        self.position = 0

    def next(self):
        """The extra negatives of one step: a LongTensor of ``n_sample`` item ids on the model's device."""
        if self.position + self.n_sample > len(self.block):
            uniform = torch.rand(self.block_size, generator=self.generator, dtype=torch.float64)
            # right=True never lands on a zero-weight item, whose cumulative value equals its predecessor's.
            self.block = self.search(self.cumulative, uniform.to(self.device))
            self.block.clamp_(max=self.last_drawable)
            self.position = 0
        sample = self.block[self.position : self.position + self.n_sample]
        self.position += self.n_sample
        return sample


class ExtraNegatives:
    """A run's stream of extra negatives: ``n_sample`` items a step by ``support ** alpha``, restarted from a seed
    at every epoch (so an epoch's draws do not depend on what ran before it)."""

    def __init__(self, item_support, n_sample, alpha, seed):
        self.item_support, self.n_sample, self.alpha = item_support, n_sample, alpha
        self.search = searchsorted_right
        self.reseed(seed)

    def reseed(self, seed):
        """Draw from ``seed`` on (the sampler is built at the next draw, on that draw's device)."""
        self.seed, self.sampler = seed, None

    def use_search(self, search):
        """Find the drawn items with ``search`` from the next block of draws on (it must answer as
        :func:`searchsorted_right` does, so the draws stay the same)."""
        self.search = search
        if self.sampler is not None:
            self.sampler.search = search

    def next(self, device):
        """The extra negatives of one step (``n_sample`` item ids on ``device``)."""
        if self.sampler is None:
            generator = torch.Generator().manual_seed(self.seed)
            self.sampler = PopularitySampler(self.item_support, self.n_sample, self.alpha, generator, device,
                                             search=self.search)
        return self.sampler.next()

    def columns(self, targets):
        """The items a training step scores: the mini-batch targets (the diagonal), then the extra negatives."""
        return targets if self.n_sample == 0 else torch.cat([targets, self.next(targets.device)])
