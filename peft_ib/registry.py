"""Registers IB-LoRA as a PEFT method: the only code that touches PEFT's closed `PeftType` enum.

PEFT 0.21 looks a method up by `PeftType` member in three dicts (config, tuner, key prefix). Its public
`peft.utils.register_peft_method` fills those dicts but refuses a name that is not already a `PeftType`
member, and the enum is closed. So we add the member `PeftType.IBLORA` to the enum by hand and fill the three
dicts directly, with LoRA's `lora_` prefix: IB-LoRA keeps LoRA's naming so that every LoRA code path (saving,
loading, `requires_grad` toggling) treats the IB encoders as adapter weights.

`register()` is idempotent. `tests/test_registry.py` fails loudly if a PEFT upgrade changes any of this.
"""

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils.peft_types import PeftType

from .config import IBLORA, IBLoraConfig
from .model import IBLoraModel


def _add_enum_member(name: str) -> PeftType:
    """Add `PeftType.<name>` (value == name, like every PeftType member) to the already-built enum."""
    if name in PeftType._member_map_:
        return PeftType._member_map_[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member._sort_order_ = len(PeftType._member_names_)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)
    return member


def register() -> PeftType:
    """Make `PeftType.IBLORA` exist and map it to IBLoraConfig / IBLoraModel with LoRA's `lora_` prefix."""
    peft_type = _add_enum_member(IBLORA)
    PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = IBLoraConfig
    PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = IBLoraModel
    PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = IBLoraModel.prefix
    return peft_type
