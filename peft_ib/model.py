"""IBLoraModel: PEFT's LoRA, plus one IB encoder per chosen decoder block, run only in a training forward.

Where things live:
- LoRA layers: exactly as `peft.LoraModel` puts them.
- IB encoders: `self.lora_ib_encoders[adapter_name][str(block_index)]`, on the tuner itself (as VeRA keeps its
  shared matrices), so PEFT's structural rules make them adapter weights: saved and loaded with the adapter, per
  adapter name, trainable only while their adapter is active. Parameter names contain `lora_`.
- The block outputs are captured by forward hooks that exist only for the duration of a training forward with
  labels (never `output_hidden_states=True`); eval, `generate` and `disable_adapter()` run the plain LoRA model.
- ce_ib: in row tiles of cross_entropy, or by the kernel in `fused_target_log_probs` when one is handed in
  (IBSFTTrainer hands in TRL's where it is fast); this package imports nothing from TRL.
The method and the units of the IB terms: docs/METHOD.md.
"""

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from operator import attrgetter

import torch
from peft import LoraModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.integrations import init_empty_weights
from torch import nn
from torch.distributed.tensor import DTensor
from transformers.utils import logging

from .config import IBLoraConfig
from .hub import install_card_hook
from .layer import IBEncoder, kl_to_standard_normal, sample_z

logger = logging.get_logger(__name__)

# Where decoder blocks live in common causal-LM classes, relative to the model passed to get_peft_model.
BLOCK_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen2, Gemma, Phi-3, ...
    "model.language_model.layers",  # multimodal wrappers
    "transformer.h",  # GPT-2, GPT-J, Falcon, BLOOM, StarCoder
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
)
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm")
# Logits per (rows, vocab) tile of the row-chunked cross-entropy of the IB branch.
CE_TILE_ELEMENTS = 2**25  # 128 MiB in fp32


@dataclass
class IBTerms:
    """
    IB terms of one adapter's last training forward, as sums and counts so that a trainer can normalize them over a
    whole accumulated batch. `kl()` / `ce_ib()` / `loss()` normalize over this forward alone unless told otherwise.
    """

    layers: list[int]  # IB blocks, 0-based
    kl_sum: torch.Tensor  # (num_layers,) KL summed over the masked positions and the D latent dims, nats
    num_kl_positions: torch.Tensor  # () positions in the KL mask
    ce_sum: torch.Tensor  # (num_layers,) -log p(label | h_ib) summed over supervised positions, nats
    num_ce_positions: torch.Tensor  # () supervised positions (labels != -100 after the shift)
    ib_dim: int
    alpha: float
    beta: float
    in_loss: bool = False  # the penalty was added to the forward's output `loss` (IBLoraModel.ib_penalty_in_loss)

    def kl(self, num_positions=None) -> torch.Tensor:
        """(num_layers,) KL per position and latent dim (the official code's `.mean()` scale)."""
        count = self.num_kl_positions if num_positions is None else num_positions
        return self.kl_sum / (torch.as_tensor(count).clamp(min=1) * self.ib_dim)

    def ce_ib(self, num_positions=None) -> torch.Tensor:
        """(num_layers,) cross-entropy per supervised token of the labels predicted from z."""
        count = self.num_ce_positions if num_positions is None else num_positions
        return self.ce_sum / torch.as_tensor(count).clamp(min=1)

    def loss(self, num_kl_positions=None, num_ce_positions=None, alpha=None, beta=None) -> torch.Tensor:
        """alpha * (KL + beta * ce_ib), each averaged over the IB blocks; alpha/beta default to the config's."""
        alpha = self.alpha if alpha is None else alpha
        beta = self.beta if beta is None else beta
        return alpha * (self.kl(num_kl_positions).mean() + beta * self.ce_ib(num_ce_positions).mean())


@dataclass
class IBTermsCollector:
    """What `IBLoraModel.collect_ib_terms` yields: the labels it lends to a forward without any, and the terms."""

    labels: torch.Tensor | None  # (batch, seq), or None
    shift_labels: torch.Tensor | None  # (batch, seq) already shifted, or None
    terms: IBTerms | None = None  # of the first forward in the context, once it ran
    forwards: int = 0  # forwards run in the context


def find_decoder_blocks(model: nn.Module, blocks_path: str | None = None) -> tuple[str, nn.ModuleList]:
    """The decoder block list of `model` and its dotted path; `blocks_path` overrides the search."""
    for path in (blocks_path,) if blocks_path else BLOCK_PATHS:
        try:
            blocks = attrgetter(path)(model)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList):
            return path, blocks
    if blocks_path:
        raise ValueError(f"ib_blocks_path={blocks_path!r} does not name an nn.ModuleList in {type(model).__name__}.")
    raise ValueError(
        f"Could not find the decoder blocks of {type(model).__name__}: looked for an nn.ModuleList at "
        f"{', '.join(BLOCK_PATHS)}. Pass its dotted path as IBLoraConfig(ib_blocks_path=...)."
    )


def block_output(output) -> torch.Tensor:
    """The hidden state (batch, seq, H) in a decoder block's output, a tensor or a tuple led by it."""
    return output[0] if isinstance(output, (tuple, list)) else output


def full_shape(param: torch.Tensor) -> torch.Size:
    """The shape of the whole parameter: a ZeRO-3 partition holds a flat slice (its `ds_shape` is the whole shape);
    an FSDP2 DTensor's `shape` is already the global one."""
    return getattr(param, "ds_shape", None) or param.shape


@contextmanager
def whole_parameters(weight: torch.Tensor, bias: torch.Tensor | None):
    """
    Yields (weight, bias) whole on this rank: ZeRO-3 partitions are gathered for the duration (DeepSpeed's
    GatheredParameters, a collective), frozen FSDP2 DTensor shards all-gathered into plain tensors; anything else as it
    is. Every rank must enter it the same number of times, whatever its batch holds.
    """
    params = [p for p in (weight, bias) if p is not None]
    partitioned = [p for p in params if getattr(p, "ds_status", None) is not None and p.ds_status.name != "AVAILABLE"]
    if partitioned:
        import deepspeed  # only reached with ZeRO-3 parameters, so deepspeed is installed

        with deepspeed.zero.GatheredParameters(partitioned):
            yield weight, bias
        return
    if any(isinstance(p, DTensor) for p in params):
        if any(p.requires_grad for p in params):
            raise NotImplementedError(
                "The output layer is an FSDP2-sharded DTensor outside its module's forward and is trainable: ce_ib "
                "cannot route its gradient. Freeze it, or shard it with the root module (fully_shard(model) last)."
            )
        yield tuple(p.full_tensor() if isinstance(p, DTensor) else p for p in (weight, bias))  # bias may be None
        return
    yield weight, bias


def _target_log_probs(lm_head, h_ib, targets, softcap, logit_scale, fused=None) -> torch.Tensor:
    """
    (S,) log p(target | h_ib) under the model's output layer, h_ib (S, H); chunked, so no (S, vocab) tensor, except
    when LoRA targets the output layer itself. `fused(lm_head, h_ib, targets, softcap, logit_scale)`, when given, is
    a kernel that computes the same without logits tiles in memory (IBSFTTrainer hands in TRL's where it is fast).
    Every rank of a sharded run calls the output layer here, even with S = 0, so the collectives stay matched.
    """
    if isinstance(lm_head, BaseTunerLayer) and not lm_head.merged:
        # `lm_head.weight` is then the frozen base weight alone: run the layer, adapter included as in the model's own
        # logits, on the S supervised rows (one module call, so ZeRO-3's hooks gather it once on every rank).
        return _logits_log_probs(lm_head(h_ib.to(lm_head.weight.dtype)), targets, softcap, logit_scale)
    if fused is not None:
        return fused(lm_head, h_ib, targets, softcap, logit_scale)
    return _RowTiledLogProbs.apply(h_ib, lm_head.weight, lm_head.bias, targets, softcap, logit_scale)


class _RowTiledLogProbs(torch.autograd.Function):
    """
    log p(target | h_ib) in row tiles of cross_entropy, one (rows, vocab) tile in memory at a time, recomputed in
    backward (as activation checkpointing would). The output layer's weight is read directly, made whole once per
    pass by `whole_parameters`, as TRL's fused LM head does under ZeRO-3: a fixed count of collectives on every rank.
    """

    @staticmethod
    def forward(ctx, h_ib, weight, bias, targets, softcap, logit_scale):
        ctx.save_for_backward(h_ib, weight, bias, targets)
        ctx.logit_args = (softcap, logit_scale)
        with whole_parameters(weight, bias) as (weight, bias):
            return torch.cat(
                [h_ib.new_zeros(0, dtype=torch.float32)]
                + [
                    _tile_log_probs(h_ib[i : i + rows], weight, bias, targets[i : i + rows], softcap, logit_scale)
                    for i, rows in _row_tiles(weight, len(targets))
                ]
            )

    @staticmethod
    def backward(ctx, grad):
        h_ib, weight, bias, targets = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        with whole_parameters(weight, bias) as (weight, bias), torch.enable_grad():
            leaves = [
                None if x is None else x.detach().requires_grad_(need) for x, need in zip((h_ib, weight, bias), needs)
            ]
            h, weight, bias = leaves
            for i, rows in _row_tiles(weight, len(targets)):
                log_probs = _tile_log_probs(h[i : i + rows], weight, bias, targets[i : i + rows], *ctx.logit_args)
                if log_probs.requires_grad:
                    log_probs.backward(grad[i : i + rows])
        grads = [
            None if x is None or not need else (x.grad if x.grad is not None else torch.zeros_like(x))
            for x, need in zip(leaves, needs)
        ]
        return *grads, None, None, None


def _row_tiles(weight, num_rows: int):
    """(start, rows) of the row tiles of `num_rows` rows, each (rows, vocab) tile at most CE_TILE_ELEMENTS logits."""
    rows = max(1, CE_TILE_ELEMENTS // full_shape(weight)[0])
    return [(i, rows) for i in range(0, num_rows, rows)]


def _tile_log_probs(h_ib, weight, bias, targets, softcap, logit_scale) -> torch.Tensor:
    """(rows,) log p(target | h_ib) from the full (rows, vocab) logits of h_ib (rows, H)."""
    return _logits_log_probs(nn.functional.linear(h_ib.to(weight.dtype), weight, bias), targets, softcap, logit_scale)


def _logits_log_probs(logits, targets, softcap, logit_scale) -> torch.Tensor:
    """(rows,) log p(target) from logits (rows, vocab), scaled and soft-capped as the model's own logits."""
    logits = logits.float() * logit_scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return -nn.functional.cross_entropy(logits, targets, reduction="none")


class IBLoraModel(LoraModel):
    """LoRA (all of `peft.LoraModel`) plus the IB encoders of IB-FT; see the module docstring for the layout."""

    # The encoders live on the tuner, as VeRA's shared matrices do: `inject_adapter_in_model` would lose them.
    uses_shared_state = True

    def _pre_injection_hook(self, model, config, adapter_name) -> None:
        """Before the first adapter (BaseTuner.__init__): the state every IB adapter of this tuner shares."""
        super()._pre_injection_hook(model, config, adapter_name)
        self.lora_ib_encoders = nn.ModuleDict()
        self._ib_adapters_enabled = True
        self._last_ib_terms: dict[str, IBTerms] = {}
        self._ib_capture = None
        self._ib_collector: IBTermsCollector | None = None
        self._ib_unread_penalty: dict | None = (
            None  # the last penalty put into a training loss, until it gets a gradient
        )
        self._ib_unread_warned = False
        # In a training forward with labels, the IB penalty is added to the output's `loss` (see `_ib_post_forward`).
        self.ib_penalty_in_loss = True
        # Optional kernel for log p(target | h_ib) (see `_target_log_probs`); None: row tiles of cross_entropy.
        self.fused_target_log_probs = None

    def _check_new_adapter_config(self, config) -> None:
        """Before PEFT changes anything for a new adapter: a config or model IB cannot attach to fails here."""
        if not isinstance(config, IBLoraConfig):
            raise TypeError(f"IBLoraModel needs an IBLoraConfig, got {type(config).__name__}.")
        super()._check_new_adapter_config(config)
        self._ib_placement(self.model, config)

    def _ib_placement(self, model: nn.Module, config: IBLoraConfig) -> tuple[nn.ModuleList, list[int], int]:
        """(decoder blocks, IB block indices, hidden size) for `config` on `model`; a ValueError naming the fix if IB
        cannot attach there."""
        _, blocks = find_decoder_blocks(model, config.ib_blocks_path)
        layers = config.resolve_ib_layers(len(blocks))
        get_output_embeddings = getattr(model, "get_output_embeddings", None)
        lm_head = get_output_embeddings() if get_output_embeddings is not None else None
        if not isinstance(getattr(lm_head, "weight", None), torch.Tensor):
            raise ValueError(
                f"IB-LoRA needs the model's output layer to decode the bottleneck (ce_ib), but "
                f"{type(model).__name__}.get_output_embeddings() gives {type(lm_head).__name__}: use a causal LM "
                "class with an LM head (e.g. AutoModelForCausalLM), not a bare backbone."
            )
        if config.ib_final_norm:
            self._final_norm(model, config)
        # From the whole shape: under zero.Init every loaded parameter is already a (0,) partition.
        return blocks, layers, full_shape(lm_head.weight)[1]

    def _post_injection_hook(self, model, config, adapter_name) -> None:
        """After the first adapter is in (BaseTuner.__init__): hook the wrapped model, and PEFT's card (peft_ib.hub)."""
        super()._post_injection_hook(model, config, adapter_name)
        # Hooks on the wrapped model's __call__, so the IB branch runs whichever PeftModel class or patched forward
        # (TRL's fused LM head) drives it; always_call unhooks the blocks even if the forward raises.
        self._ib_model_hooks = [
            model.register_forward_pre_hook(self._ib_pre_forward, with_kwargs=True),
            model.register_forward_hook(self._ib_post_forward, with_kwargs=True, always_call=True),
        ]
        install_card_hook()

    def inject_adapter(
        self, model, adapter_name, autocast_adapter_dtype=True, low_cpu_mem_usage=False, state_dict=None
    ):
        """LoRA's injection, then one IBEncoder per IB block, placed as LoRA places its weights: on the block's
        device, in the block's dtype (PeftModel then upcasts them with the LoRA weights when
        `autocast_adapter_dtype=True`, see `_cast_adapter_dtype`); on the meta device when loading with
        `low_cpu_mem_usage=True`, where PEFT assigns the saved weights afterwards."""
        super().inject_adapter(model, adapter_name, autocast_adapter_dtype, low_cpu_mem_usage, state_dict)
        config = self.peft_config[adapter_name]
        blocks, layers, hidden_size = self._ib_placement(model, config)
        with init_empty_weights() if low_cpu_mem_usage else nullcontext():
            self.lora_ib_encoders[adapter_name] = nn.ModuleDict(
                {
                    str(index): IBEncoder(
                        hidden_size, config.ib_dim, config.ib_logvar_min, config.ib_logvar_max, config.ib_input_norm
                    )
                    for index in layers
                }
            )
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self._set_ib_requires_grad(config.inference_mode)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str) -> None:
        """Each encoder of `adapter_name` to its block's device and float dtype, unless it is still on the meta device
        (LoRA layers' rule of the same name; PEFT calls it after assigning weights loaded with low_cpu_mem_usage)."""
        if adapter_name not in self.lora_ib_encoders:
            return
        _, blocks = find_decoder_blocks(self.model, self.peft_config[adapter_name].ib_blocks_path)
        for index, encoder in self.lora_ib_encoders[adapter_name].items():
            if any(p.device.type == "meta" for p in encoder.parameters()):
                continue
            ref = next(blocks[int(index)].parameters())
            encoder.to(device=ref.device, dtype=ref.dtype if ref.dtype.is_floating_point else None)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """PEFT's upcast of float16/bfloat16 adapter weights to float32 (autocast_adapter_dtype=True), for the IB
        encoders too; with autocast_adapter_dtype=False they keep the base model's dtype, as the LoRA weights do."""
        super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype)
        if autocast_adapter_dtype and adapter_name in self.lora_ib_encoders:
            for module in self.lora_ib_encoders[adapter_name].modules():
                for name, param in list(module.named_parameters(recurse=False)):
                    if param.dtype in (torch.float16, torch.bfloat16):
                        setattr(module, name, nn.Parameter(param.data.float(), requires_grad=param.requires_grad))

    def add_weighted_adapter(self, adapters, weights, adapter_name, *args, **kwargs) -> None:
        """
        LoRA's `add_weighted_adapter`: the new adapter's LoRA weights combine those of `adapters`. Its IB encoders
        are newly initialized, not combined: an encoder is a nonlinear map read only in training, so there is no
        combination of encoders that matches the combined LoRA weights, and inference (where encoders are never run)
        is exactly LoRA's combined adapter. Training the new adapter further trains its encoders from scratch.
        """
        super().add_weighted_adapter(adapters, weights, adapter_name, *args, **kwargs)
        logger.warning(
            f"add_weighted_adapter: {adapter_name!r} combines the LoRA weights of {adapters}; its IB encoders are newly "
            "initialized (encoders are used only in training, so inference is unaffected)."
        )

    # ---- adapter bookkeeping that must also cover the encoders -------------------------------------------------

    def _set_ib_requires_grad(self, inference_mode: bool = False) -> None:
        for name, encoders in self.lora_ib_encoders.items():
            trainable = self._ib_adapters_enabled and name in self.active_adapters and not inference_mode
            encoders.requires_grad_(trainable)

    def set_adapter(self, adapter_name, inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        self._set_ib_requires_grad(inference_mode)

    def set_requires_grad(self, adapter_names, requires_grad: bool = True) -> None:
        super().set_requires_grad(adapter_names, requires_grad)
        for name in [adapter_names] if isinstance(adapter_names, str) else adapter_names:
            if name in self.lora_ib_encoders:
                self.lora_ib_encoders[name].requires_grad_(requires_grad)

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        super()._enable_adapter_layers(enabled)
        self._ib_adapters_enabled = enabled
        self._set_ib_requires_grad()

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        del self.lora_ib_encoders[adapter_name]
        self._last_ib_terms.pop(adapter_name, None)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # PEFT only strips an adapter name found just before the parameter's own name (`lora_A.<name>.weight`); the
        # encoders hold it further up (`lora_ib_encoders.<name>.<block>.mu.weight`). Strip it there too, so that the
        # checkpoint is name-free and loads under any adapter name (loading maps keys back through this function).
        marker = f"lora_ib_encoders.{adapter_name}."
        if marker in key:
            return key.replace(marker, "lora_ib_encoders.", 1)
        return super()._remove_adapter_name_from_key(key, adapter_name)

    # ---- the IB branch ----------------------------------------------------------------------------------------

    @staticmethod
    def _final_norm(model: nn.Module, config: IBLoraConfig) -> nn.Module:
        path, _ = find_decoder_blocks(model, config.ib_blocks_path)
        backbone = attrgetter(path.rpartition(".")[0])(model) if "." in path else model
        for name in FINAL_NORM_NAMES:
            if isinstance(getattr(backbone, name, None), nn.Module):
                return getattr(backbone, name)
        raise ValueError(
            f"ib_final_norm=True, but {type(backbone).__name__} has none of the final-norm attributes "
            f"{', '.join(FINAL_NORM_NAMES)}; set ib_final_norm=False."
        )

    def _active_ib_adapter(self) -> str | None:
        names = [name for name in self.active_adapters if name in self.lora_ib_encoders]
        if len(names) > 1:
            raise ValueError(f"IB training supports one active IB adapter at a time, got {names}.")
        return names[0] if names else None

    @contextmanager
    def collect_ib_terms(self, labels: torch.Tensor | None = None, shift_labels: torch.Tensor | None = None):
        """
        For a trainer that weights the IB penalty itself (IBSFTTrainer): within this context the first forward of the
        model computes the IB terms, in training or eval mode, from its own labels or, when it is given none (TRL
        runs such forwards for the logits), from `labels` / `shift_labels` (batch, seq); later forwards compute none,
        and the penalty is never added to an output's `loss`. Yields an `IBTermsCollector`, whose `terms` hold them
        afterwards (None when no forward computed any: the adapter disabled or inactive, or no labels).
        """
        if self._ib_collector is not None:
            raise RuntimeError("collect_ib_terms contexts cannot be nested.")
        self._ib_collector = collector = IBTermsCollector(labels, shift_labels)
        try:
            yield collector
        finally:
            self._ib_collector = None

    def _ib_pre_forward(self, model, args, kwargs):
        """Forward pre-hook of the wrapped model: hook the IB blocks when this forward computes the IB terms (a
        training forward with labels; inside `collect_ib_terms`, its first forward)."""
        collector = self._ib_collector
        if collector is None:
            self._warn_if_penalty_got_no_gradient()
        elif collector.forwards:
            collector.forwards += 1
            return
        else:
            collector.forwards = 1
        self._last_ib_terms.clear()  # terms describe the last forward that computed any, never a stale one
        labels, shift_labels = kwargs.get("labels"), kwargs.get("shift_labels")
        if collector is not None and labels is None and shift_labels is None:
            labels, shift_labels = collector.labels, collector.shift_labels
        adapter = self._active_ib_adapter() if self._ib_adapters_enabled else None
        if adapter is None or (labels is None and shift_labels is None) or (collector is None and not model.training):
            return
        config = self.peft_config[adapter]
        _, blocks = find_decoder_blocks(model, config.ib_blocks_path)
        captured: dict[int, torch.Tensor] = {}

        def capture(index):
            def save(module, args, output):
                # Under gradient checkpointing a block can run again in backward; keep the forward's output.
                captured.setdefault(index, block_output(output))

            return save

        handles = [blocks[int(i)].register_forward_hook(capture(int(i))) for i in self.lora_ib_encoders[adapter]]
        self._ib_capture = (adapter, captured, handles, labels, shift_labels)

    def _ib_post_forward(self, model, args, kwargs, outputs):
        """Forward hook of the wrapped model: unhook the blocks, compute the IB terms from their outputs and, in a
        training forward outside `collect_ib_terms`, add the penalty to the output's `loss`."""
        if self._ib_capture is None:
            return None
        adapter, captured, handles, labels, shift_labels = self._ib_capture
        self._ib_capture = None
        for handle in handles:
            handle.remove()
        encoders = self.lora_ib_encoders[adapter]
        if len(captured) < len(encoders):
            return None  # the forward raised before reaching the IB blocks; its error propagates
        if torch.is_grad_enabled() and not all(h.requires_grad for h in captured.values()):
            raise RuntimeError(
                "The IB blocks' outputs carry no gradient: reentrant gradient checkpointing runs blocks under "
                "no_grad. Use activation_checkpointing_kwargs={'use_reentrant': False}."
            )
        terms = self._ib_terms(
            self.peft_config[adapter], encoders, captured, kwargs.get("attention_mask"), labels, shift_labels
        )
        self._last_ib_terms[adapter] = terms
        if self._ib_collector is not None:
            self._ib_collector.terms = terms
            return None
        if self.ib_penalty_in_loss:
            return self._add_penalty_to_loss(outputs, terms, kwargs.get("num_items_in_batch"))
        return None

    def _add_penalty_to_loss(self, outputs, terms: IBTerms, num_items_in_batch):
        """
        The forward's outputs with `alpha * (KL + beta * ce_ib)` added to their `loss`, so that any loop that
        backpropagates the model's loss trains IB-FT. With `num_items_in_batch` (the supervised tokens of a whole
        accumulated batch, which transformers' Trainer passes and divides the task loss by), the penalty is weighted by
        this micro-batch's share of those tokens, as the task loss is: ce_ib exactly as ce, the KL by token share.
        """
        is_tuple = isinstance(outputs, tuple)
        loss = outputs[0] if is_tuple else getattr(outputs, "loss", None)
        if not isinstance(loss, torch.Tensor):
            return None
        penalty = terms.loss()
        if num_items_in_batch is not None:
            penalty = penalty * terms.num_ce_positions / torch.as_tensor(num_items_in_batch).to(penalty.device)
        if penalty.requires_grad:
            state = self._ib_unread_penalty = {"got_gradient": False}
            penalty.register_hook(lambda grad: state.__setitem__("got_gradient", True))
        terms.in_loss = True
        if is_tuple:
            return (loss + penalty.to(loss.dtype), *outputs[1:])
        outputs.loss = loss + penalty.to(loss.dtype)
        return outputs

    def _warn_if_penalty_got_no_gradient(self) -> None:
        """Once per model: the penalty put into the last training forward's loss was never backpropagated."""
        state, self._ib_unread_penalty = self._ib_unread_penalty, None
        if state is None or state["got_gradient"] or self._ib_unread_warned:
            return
        self._ib_unread_warned = True
        logger.warning(
            "IB-LoRA: the IB penalty that the last training forward added to its output `loss` got no gradient, so "
            "the IB encoders are not being trained (this trains plain LoRA). A loop that builds its own loss from the "
            "logits, or TRL's SFTTrainer (which computes its loss from its fused LM head), drops it. Use "
            "trl_ib.IBSFTTrainer, backpropagate `outputs.loss`, or set `peft_ib.find_ib_model(model)."
            "ib_penalty_in_loss = False` and add `peft_ib.ib_loss(model)` to your loss."
        )

    def _unload_and_optionally_merge(self, *args, **kwargs):
        for handle in self._ib_model_hooks:
            handle.remove()
        self._last_ib_terms.clear()
        return super()._unload_and_optionally_merge(*args, **kwargs)

    def _ib_terms(self, config, encoders, captured, attention_mask, labels, shift_labels) -> IBTerms:
        h0 = next(iter(captured.values()))  # (B, N, H)
        batch, seq = h0.shape[:2]
        # Position t predicts token t+1: the supervised positions are those whose next-token label is kept.
        if shift_labels is None:
            shift_labels = torch.cat([labels[:, 1:], labels.new_full((batch, 1), -100)], dim=1)
        if shift_labels.shape != (batch, seq):
            raise ValueError(
                f"IB terms: labels of shape {tuple(shift_labels.shape)} for a forward of shape {(batch, seq)} (batch, seq)."
            )
        supervised = shift_labels != -100  # (B, N)
        if config.ib_kl_mask == "response":
            kl_mask = supervised
        elif config.ib_kl_mask == "attention" and attention_mask is not None:
            kl_mask = attention_mask.bool()
        else:  # "all", or "attention" on padding-free batches (no padding, every position is a real token)
            kl_mask = torch.ones(batch, seq, dtype=torch.bool, device=h0.device)
        targets = shift_labels[supervised]  # (S,)
        rows = kl_mask | supervised  # (B, N): the P positions the encoder runs on
        rows_in_kl, rows_supervised = kl_mask[rows], supervised[rows]  # (P,) each

        lm_head = self.model.get_output_embeddings()
        norm = self._final_norm(self.model, config) if config.ib_final_norm else None
        text_config = self.model.config.get_text_config()
        softcap = getattr(text_config, "final_logit_softcapping", None)
        logit_scale = getattr(text_config, "logit_scale", None) or 1.0

        kl_sums, ce_sums = [], []
        for index, encoder in ((int(i), e) for i, e in encoders.items()):
            mu, logvar = encoder.encode(captured[index][rows])  # (P, D)
            z = sample_z(mu, logvar)
            kl_sums.append(kl_to_standard_normal(mu[rows_in_kl], logvar[rows_in_kl]).sum())
            h_ib = encoder.decode(z[rows_supervised])  # (S, H)
            if norm is not None:
                h_ib = norm(h_ib.to(lm_head.weight.dtype))
            log_probs = _target_log_probs(lm_head, h_ib, targets, softcap, logit_scale, self.fused_target_log_probs)
            ce_sums.append(-log_probs.sum())
        return IBTerms(
            layers=[int(i) for i in encoders],
            kl_sum=torch.stack(kl_sums),
            num_kl_positions=kl_mask.sum(),
            ce_sum=torch.stack(ce_sums),
            num_ce_positions=supervised.sum(),
            ib_dim=config.ib_dim,
            alpha=config.ib_alpha,
            beta=config.ib_beta,
        )
