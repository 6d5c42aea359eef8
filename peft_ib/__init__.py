"""IB-LoRA for PEFT: `import peft_ib` registers the IBLORA adapter type with PEFT.

from peft import get_peft_model
from peft_ib import IBLoraConfig
model = get_peft_model(model, IBLoraConfig(r=32, target_modules="all-linear", ib_layers=0.625))
"""

from .registry import register

register()  # as PEFT's own methods register themselves; the card hook waits for an IB-LoRA adapter (see hub.py)

from .config import IBLoraConfig  # noqa: E402
from .export import export_lora  # noqa: E402
from .layer import IBEncoder  # noqa: E402
from .model import IBLoraModel, IBTerms  # noqa: E402
from .terms import find_ib_model, ib_loss, ib_terms  # noqa: E402

__all__ = [
    "IBLoraConfig",
    "IBLoraModel",
    "IBEncoder",
    "IBTerms",
    "ib_loss",
    "ib_terms",
    "find_ib_model",
    "export_lora",
]
