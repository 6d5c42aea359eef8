"""The paper's data format for IBSFTTrainer."""

# The paper's datasets (OriGen, Evol-CodeAlpaca-V1) as the official code reads them.
PAPER_COLUMNS = ("Instruction", "Response")


def to_prompt_completion(dataset, prompt_column: str = PAPER_COLUMNS[0], completion_column: str = PAPER_COLUMNS[1]):
    """The paper's format: prompt = instruction + "\\n", completion = response, so the loss is on the response."""
    missing = [c for c in (prompt_column, completion_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"Dataset has no column(s) {missing}; its columns are {dataset.column_names}.")
    return dataset.map(
        lambda row: {"prompt": row[prompt_column] + "\n", "completion": row[completion_column]},
        remove_columns=dataset.column_names,
    )
