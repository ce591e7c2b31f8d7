"""transformers' own fp32 model for an HF directory: the independent side of `verify` and of the parity tests.

A native class (Qwen3) is built with `from_config` and filled from the safetensors files: transformers 5's
`from_pretrained` leaves non-persistent buffers (RoPE `inv_freq`) uninitialised when torch.distributed is
initialised. A checkpoint whose modeling code ships with it (config.json `auto_map`, as LLaDA2's does) is
Python from the checkpoint directory: it runs only when the caller passes ``trust_remote_code=True``.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from tide_megatron.models.convert.hf_files import read_hf_config
from tide_megatron.models.safetensors_reader import CheckpointError, SafetensorsReader

TRUST_FLAG = "--trust-remote-code"


def load_hf_reference(hf_dir: str, config: Optional[PretrainedConfig] = None) -> torch.nn.Module:
    """transformers' own class for `hf_dir` (or for `config`), fp32, weights read with safetensors."""
    config = config or AutoConfig.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    reader = SafetensorsReader(hf_dir)
    state = {k: reader.get(k).to(torch.float32) for k in reader.keys()}
    reader.close()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and getattr(config, "tie_word_embeddings", False))]
    if missing or unexpected:
        raise ValueError(f"{hf_dir}: checkpoint does not match {type(model).__name__}: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    return model.eval()


def remote_code_file(hf_config: dict[str, Any]) -> Optional[str]:
    """The modeling file config.json's `auto_map` names for AutoModelForCausalLM, or None."""
    entry = (hf_config.get("auto_map") or {}).get("AutoModelForCausalLM")
    if not entry:
        return None
    module = entry.split("--")[-1].rsplit(".", 1)[0]  # "[repo--]modeling_x.ClassName"
    return module.replace(".", os.sep) + ".py"


def load_remote_code_reference(hf_dir: str, trust_remote_code: bool) -> torch.nn.Module:
    """The checkpoint's own modeling code (fp32), run only with `trust_remote_code`; clear errors otherwise.

    Import failures of that file (typically a transformers module it needs that the installed version no
    longer has) name the transformers version the checkpoint was saved with.
    """
    hf_config = read_hf_config(hf_dir)
    config_file = os.path.join(hf_dir, "config.json")
    code = remote_code_file(hf_config)
    if code is None:
        raise CheckpointError(f"{config_file}: no auto_map.AutoModelForCausalLM, so the checkpoint carries no "
                              f"modeling code of its own to compare with (expected the released layout)")
    if not trust_remote_code:
        raise CheckpointError(f"{config_file}: auto_map names modeling code shipped in the checkpoint ({code}); "
                              f"verify runs that Python file only when asked to: pass {TRUST_FLAG} if you trust "
                              f"{hf_dir}")
    if not os.path.isfile(os.path.join(hf_dir, code)):
        raise CheckpointError(f"{os.path.join(hf_dir, code)}: missing; config.json's auto_map names it as the "
                              f"checkpoint's own modeling code")
    try:
        model = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True, dtype=torch.float32)
    except ImportError as err:
        saved = hf_config.get("transformers_version")
        needs = (f"the checkpoint was saved with transformers {saved} (config.json transformers_version): verify "
                 f"it where that version is installed, e.g. pip install 'transformers=={saved}'" if saved else
                 "config.json does not record the transformers version it was saved with: verify it where the "
                 "version its modeling code was written for is installed")
        raise CheckpointError(f"{os.path.join(hf_dir, code)}: the checkpoint's own modeling code does not import "
                              f"with the installed transformers {transformers.__version__} ({err}); {needs}") from err
    except (ValueError, OSError) as err:
        raise CheckpointError(f"{hf_dir}: transformers could not load the checkpoint's own modeling code "
                              f"({code}): {err}") from err
    return model.float().eval()  # fp32 even where an older transformers ignores `dtype`
