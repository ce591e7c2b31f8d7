"""HF tensors <-> the tensors of a built megatron model, through an architecture's `WeightMapping`.

`load_hf_weights` fills this rank's model (any TP / PP / EP / ETP layout) reading only this rank's slice of
each HF tensor; `hf_tensors` reads an unsharded model back out as HF tensors. Both walk the model's state
dict (parameters and persistent buffers such as the router's expert bias) and turn local layer / expert
indices into global ones: a layer's global index is megatron's own `layer_number - 1`, an expert's is
`ep_rank * experts_per_rank + local index`.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist

from tide_megatron.models.convert.mapping import ParamRule, WeightMapping
from tide_megatron.models.safetensors_reader import CheckpointError, SafetensorsReader


def mapped_tensors(model: torch.nn.Module, mapping: WeightMapping
                   ) -> Iterator[tuple[str, torch.Tensor, ParamRule, list[str]]]:
    """(megatron name, tensor, rule, its HF names at global indices) for every weight of this rank's model."""
    pgs = model.pg_collection
    layers = [layer.layer_number - 1 for layer in model.decoder.layers] if hasattr(model, "decoder") else []
    experts = getattr(model.config, "num_moe_experts", None)
    ep_size, ep_rank = dist.get_world_size(pgs.ep), dist.get_rank(pgs.ep)
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name.endswith("_extra_state") or not isinstance(tensor, torch.Tensor):
            continue  # TE / megatron bookkeeping (FP8 scales and the like), not weights
        rule, local = mapping.rule_for(name)
        index = {}
        if "i" in local:
            index["i"] = layers[local["i"]]
        if "e" in local:
            if not experts:
                raise ValueError(f"{name}: an expert tensor in a model whose config has no experts")
            index["e"] = ep_rank * (experts // ep_size) + local["e"]
        yield name, tensor, rule, mapping.hf_names(rule, index)


def load_hf_weights(model: torch.nn.Module, reader: SafetensorsReader, mapping: WeightMapping) -> set[str]:
    """Copy this rank's slice of the HF tensors into `model`, one megatron tensor at a time; returns the HF
    names read. Expert tensors are split over the expert tensor-parallel group, the rest over TP."""
    pgs = model.pg_collection
    tp = dist.get_rank(pgs.tp), dist.get_world_size(pgs.tp)
    etp = dist.get_rank(pgs.expt_tp), dist.get_world_size(pgs.expt_tp)
    used: set[str] = set()
    with torch.no_grad():
        for name, target, rule, names in mapped_tensors(model, mapping):
            rank, size = etp if rule.is_expert else tp
            value = mapping.read_shard(rule, names, reader, tuple(target.shape), rank, size, f"megatron {name}")
            if tuple(value.shape) != tuple(target.shape):
                raise CheckpointError(f"{reader.hf_dir}: {names} give shape {tuple(value.shape)} for megatron "
                                      f"{name}, expected {tuple(target.shape)}")
            target.copy_(value.to(target.dtype))
            used.update(names)
    return used


def hf_tensors(model: torch.nn.Module, mapping: WeightMapping) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, CPU tensor) pairs of a model that is not tensor-parallel (mcore -> HF; one pipeline stage's
    share when pipelined). Two megatron tensors mapping to one HF name (e.g. a norm both separate and fused
    into the next linear) is an error, not a silent overwrite."""
    pgs = model.pg_collection
    if dist.get_world_size(pgs.tp) != 1 or dist.get_world_size(pgs.expt_tp) != 1:
        raise ValueError("hf_tensors needs a model built without tensor parallelism (tp = etp = 1)")
    seen: dict[str, str] = {}
    for name, tensor, rule, names in mapped_tensors(model, mapping):
        for hf_name, part in zip(names, mapping.split(rule, tensor.detach())):
            if hf_name in seen:
                raise ValueError(f"megatron tensors {seen[hf_name]} and {name} both map to HF {hf_name}")
            seen[hf_name] = name
            yield hf_name, part.to("cpu", copy=True)
