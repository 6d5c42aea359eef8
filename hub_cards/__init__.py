"""Hub model cards for IB-LoRA adapters and their plain-LoRA exports (README.md + plots)."""

from .cards import adapter_card, export_card, plot_training_curves, trainer_card, write_adapter_card

__all__ = ["adapter_card", "write_adapter_card", "trainer_card", "export_card", "plot_training_curves"]
