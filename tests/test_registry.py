"""peft_ib.registry: PeftType.IBLORA and PEFT's three method mappings, and the PEFT internals they rely on."""

import enum

import peft
import peft.mapping
import peft.peft_model
import peft.tuners.tuners_utils
import pytest
from peft.utils.peft_types import PeftType

import peft_ib
from peft_ib import IBLoraConfig, IBLoraModel
from peft_ib.registry import register


def test_enum_member_exists_and_behaves_like_the_builtin_ones():
    member = PeftType.IBLORA
    assert PeftType("IBLORA") is member
    assert PeftType["IBLORA"] is member
    assert member.name == "IBLORA" and member.value == "IBLORA"
    assert member == "IBLORA" and isinstance(member, str)  # PeftType is a str enum: configs compare it to strings
    assert member in list(PeftType)
    assert list(PeftType)[-1] is member  # appended after every built-in method
    assert IBLoraConfig().peft_type is member


def test_mappings_point_to_ib_lora():
    assert peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.IBLORA] is IBLoraConfig
    assert peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING[PeftType.IBLORA] is IBLoraModel
    assert peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.IBLORA] == "lora_"
    # The string key works too (configs loaded from JSON look the method up by its name).
    assert peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING["IBLORA"] is IBLoraConfig


def test_register_is_idempotent():
    before_members = list(PeftType)
    before_names = list(PeftType._member_names_)
    before_maps = [
        dict(m)
        for m in (
            peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING,
            peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING,
            peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING,
        )
    ]
    first = register()
    second = register()
    assert first is second is PeftType.IBLORA
    assert len(PeftType) == len(before_members)
    assert list(PeftType) == before_members
    assert PeftType._member_names_ == before_names
    assert PeftType._member_names_.count("IBLORA") == 1
    after_maps = [
        dict(m)
        for m in (
            peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING,
            peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING,
            peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING,
        )
    ]
    assert after_maps == before_maps


def test_public_register_peft_method_refuses_a_new_name():
    """Why registry.py adds the enum member by hand: PEFT's public API only registers existing PeftType members."""
    from peft.utils import register_peft_method

    with pytest.raises(ValueError, match="Unknown PEFT type IBLORA_PROBE"):
        register_peft_method(name="iblora_probe", config_cls=IBLoraConfig, model_cls=IBLoraModel, prefix="lora_")
    assert "IBLORA_PROBE" not in PeftType._member_map_


def test_peft_internals_the_registry_relies_on():
    """Fails loudly when a PEFT upgrade moves what peft_ib/registry.py patches."""
    # The enum's private tables, patched by _add_enum_member.
    assert issubclass(PeftType, str) and issubclass(PeftType, enum.Enum)
    assert isinstance(PeftType._member_map_, dict)
    assert isinstance(PeftType._value2member_map_, dict)
    assert isinstance(PeftType._member_names_, list)
    assert PeftType._member_map_["LORA"] is PeftType.LORA
    assert PeftType._value2member_map_["LORA"] is PeftType.LORA
    assert "LORA" in PeftType._member_names_
    # Every member's name equals its value (what _add_enum_member assumes).
    assert all(member.name == member.value for member in PeftType)
    # The three dicts live in peft.mapping and are the very objects PEFT's consumers read.
    for name in ("PEFT_TYPE_TO_CONFIG_MAPPING", "PEFT_TYPE_TO_TUNER_MAPPING", "PEFT_TYPE_TO_PREFIX_MAPPING"):
        assert isinstance(getattr(peft.mapping, name), dict), name
    assert peft.peft_model.PEFT_TYPE_TO_CONFIG_MAPPING is peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING
    assert peft.peft_model.PEFT_TYPE_TO_TUNER_MAPPING is peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING
    assert peft.peft_model.PEFT_TYPE_TO_PREFIX_MAPPING is peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING
    assert peft.tuners.tuners_utils.PEFT_TYPE_TO_PREFIX_MAPPING is peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING
    assert peft.PEFT_TYPE_TO_CONFIG_MAPPING is peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING
    assert peft.PEFT_TYPE_TO_TUNER_MAPPING is peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING
    # LoRA itself is registered with the prefix IB-LoRA shares.
    assert peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.LORA] == "lora_"
    assert IBLoraModel.prefix == "lora_"


def test_importing_peft_ib_registers():
    assert peft_ib.IBLoraConfig is IBLoraConfig
    assert "IBLORA" in PeftType._value2member_map_
