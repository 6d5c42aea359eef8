"""The KL controller: adapts the IB weight alpha so the KL stays near a target.

With Adam, scaling alpha scales every gradient the encoder receives, so alpha alone cannot move the encoder's
optimum: only the ratio of the KL weight to the ce_ib weight does (the beta-VAE rate knob). The controller
therefore moves alpha (the KL weight) in log space and holds alpha * beta (the ce_ib weight) fixed.
"""

import math
from dataclasses import asdict, dataclass


@dataclass
class KLController:
    """Proportional controller in log space: log(alpha) += rate * clip(log(kl / target), -1, 1)."""

    alpha: float  # current KL weight
    ce_weight: float  # alpha * beta, held fixed
    target: float  # target KL, nats per position and latent dim
    rate: float

    @property
    def beta(self) -> float:
        return self.ce_weight / self.alpha

    def update(self, kl: float) -> float:
        """Move alpha after one optimizer step whose mean KL was `kl`; returns the new alpha."""
        error = max(-1.0, min(1.0, math.log(max(kl, 1e-12) / self.target)))
        self.alpha *= math.exp(self.rate * error)
        return self.alpha

    def state_dict(self) -> dict:
        return asdict(self)
