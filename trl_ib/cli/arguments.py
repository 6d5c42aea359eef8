"""Flag values the `ib-ft` commands share."""


def parse_ib_layers(value, field_name: str = "ib_layers", single: bool = False) -> int | float | list[int]:
    """
    `IBLoraConfig.ib_layers` from a flag: '0.625' a relative depth, '19' a block index, '10,19' a list of indices. A
    YAML config gives an int, a float or a list as such. With `single`, a list is refused (one block is read).
    """
    if isinstance(value, (int, float, list)) and not isinstance(value, bool):
        parsed = value
    else:
        text = str(value).strip()
        try:
            parsed = (
                [int(part) for part in text.split(",")] if "," in text else float(text) if "." in text else int(text)
            )
        except ValueError:
            raise ValueError(
                f"{field_name}={value!r}: expected a relative depth like '0.625', a block index like '19' or a "
                "comma-separated list like '10,19'."
            ) from None
    if single and isinstance(parsed, list):
        raise ValueError(f"{field_name}={value!r}: one block is read here; give a relative depth or one index.")
    return parsed
