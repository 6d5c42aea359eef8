"""The variational IB encoder: q(z | h) = N(mu(h), diag exp(logvar(h))) and the decoder z -> h_ib.

Shapes: h (..., H) -> mu, logvar, z (..., D) -> h_ib (..., H), with H the model's hidden size and D = ib_dim.
The objective these terms enter, and their units: docs/METHOD.md, "The objective".
"""

import torch
from torch import nn

RMS_EPS = 1e-6  # of the parameter-free RMS normalization of the encoder's input (ib_input_norm="rms")


class IBEncoder(nn.Module):
    """mu / logvar heads on one block's output and the decoder `up` back to the hidden size."""

    def __init__(self, hidden_size: int, ib_dim: int, logvar_min: float, logvar_max: float, input_norm: str):
        super().__init__()
        self.mu = nn.Linear(hidden_size, ib_dim)
        self.logvar = nn.Linear(hidden_size, ib_dim)
        self.up = nn.Linear(ib_dim, hidden_size)
        self.logvar_min = logvar_min
        self.logvar_max = logvar_max
        self.input_norm = input_norm  # "rms": encode h / rms(h); "none": h itself (IBLoraConfig.ib_input_norm)

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        h (..., H) in any dtype -> mu, logvar (..., D) in float32, logvar clamped. Under bf16 autocast the heads'
        products run in bf16; their outputs are cast up before the clamp, so the KL and z are float32 terms.
        """
        h = h.to(self.mu.weight.dtype)
        if self.input_norm == "rms":
            h = nn.functional.rms_norm(h, h.shape[-1:], eps=RMS_EPS)
        return self.mu(h).float(), self.logvar(h).float().clamp(self.logvar_min, self.logvar_max)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., D) -> h_ib (..., H)."""
        return self.up(z)


def sample_z(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """One reparameterized sample z = mu + exp(logvar / 2) * eps, eps ~ N(0, I); same shape as mu."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mu, exp(logvar)) || N(0, 1)) in nats; same shape as mu."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
