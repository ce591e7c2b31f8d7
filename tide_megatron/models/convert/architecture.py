"""What the converter knows about one model family, and building that family's model from an HF directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
import torch.distributed as dist
from megatron.core.process_groups_config import ProcessGroupCollection

from tide_megatron.models.convert.mapping import WeightMapping
from tide_megatron.models.convert.weights import load_hf_weights
from tide_megatron.models.safetensors_reader import SafetensorsReader

#: name -> (ids [b, s], position ids [b, s], bool "may attend" mask [s, s] or [b, 1, s, s])
VerifyCases = dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _no_check(args: Any, reader: SafetensorsReader, hf_dir: str) -> None:
    return None


@dataclass(frozen=True)
class Architecture:
    """One model family for `tide-convert` and every loader.

    args_from_hf(config.json dict or HF dir, tp=, pp=, ep=, params_dtype=, source=, **TransformerConfig
      overrides) -> model arguments with `.vocab_size`; clear errors for another family or a bad layout.
    mapping(args) -> the two-way `WeightMapping`.
    build_model(args, pgs, backend=None) -> this rank's megatron module: (ids, position ids, bool mask,
      True = may attend) -> vocab-parallel logits [b, s, V / tp].
    reference(hf_dir, trust_remote_code) -> transformers' fp32 model for `verify` (its own class, or the
      checkpoint's `auto_map` code, which only runs when trust_remote_code is True).
    verify_cases(vocab_size, seq_len, block_size, batch, generator) -> the inputs and masks `verify` compares
      (the masks this family is driven with in TIDE).
    check_hf(args, reader, hf_dir) validates a source directory before anything is built or written.
    """

    name: str
    args_from_hf: Callable[..., Any]
    mapping: Callable[[Any], WeightMapping]
    build_model: Callable[..., torch.nn.Module]
    reference: Callable[[str, bool], torch.nn.Module]
    verify_cases: Callable[[int, int, int, int, torch.Generator], VerifyCases]
    check_hf: Callable[[Any, SafetensorsReader, str], None] = _no_check

    def build_from_hf(self, hf_dir: Union[str, Path], pgs: ProcessGroupCollection,
                      params_dtype: torch.dtype = torch.float32, backend: Optional[str] = None,
                      **overrides: Any) -> tuple[torch.nn.Module, Any, set[str]]:
        """This rank's model for the layout of `pgs`, weights streamed from `hf_dir` (only this rank's slices).

        Returns (model, args, the HF tensor names this rank read).
        """
        hf_dir = str(hf_dir)
        args = self.args_from_hf(hf_dir, tp=dist.get_world_size(pgs.tp), pp=dist.get_world_size(pgs.pp),
                                 ep=dist.get_world_size(pgs.ep), params_dtype=params_dtype, **overrides)
        reader = SafetensorsReader(hf_dir)
        try:
            self.check_hf(args, reader, hf_dir)
            model = self.build_model(args, pgs, backend=backend)
            used = load_hf_weights(model, reader, self.mapping(args))
        finally:
            reader.close()
        return model, args, used
