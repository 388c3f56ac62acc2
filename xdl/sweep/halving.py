"""Successive halving: the early stopping of a sweep, as rungs of epoch
budgets; the rungs continue Solver checkpoints (see ``run_sweep``)."""
import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class SuccessiveHalving:
    """
    Early stopping beyond the notebooks: train every trial for a few epochs,
    keep the best 1/eta by validation accuracy, continue those from their
    Solver checkpoints for eta times more epochs, and so on up to the
    trials' num_epochs.

    Fields:
    - eta: integer >= 2, the factor between rungs
    - min_epochs: epochs of the first rung, integer >= 1
    """
    eta: int = 3
    min_epochs: int = 1

    def __post_init__(self):
        for name, lo in (("eta", 2), ("min_epochs", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError("SuccessiveHalving: %s must be an integer >= %d, got %r"
                                 % (name, lo, v))

    def rungs(self, num_epochs):
        """
        Epoch budgets of the rungs: num_epochs / eta**k rounded (k = s..0,
        s = floor(log_eta(num_epochs / min_epochs))), at least min_epochs.
        For num_epochs=10, eta=3, min_epochs=1: [1, 3, 10].
        """
        if num_epochs < self.min_epochs * self.eta:
            raise ValueError("successive halving with eta=%d and min_epochs=%d needs "
                             "num_epochs >= %d, got %d"
                             % (self.eta, self.min_epochs, self.min_epochs * self.eta,
                                num_epochs))
        s = int(math.floor(math.log(num_epochs / self.min_epochs) / math.log(self.eta) + 1e-9))
        return sorted({max(self.min_epochs, int(round(num_epochs / self.eta ** k)))
                       for k in range(s + 1)})

    def survivors(self, count):
        """How many of count trials go on to the next rung."""
        return max(1, count // self.eta)
