"""HF Qwen3 config -> TransformerConfig mapping and its errors (spec §1.1)."""

import pytest
import torch

from tide_megatron.models.qwen3 import qwen3_args_from_hf
from tide_megatron.models.qwen3.tiny import tiny_qwen3_config

QWEN3_0_6B = {  # the published Qwen3-0.6B config.json fields that matter here
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072,
    "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000, "tie_word_embeddings": True, "vocab_size": 151936,
    "max_position_embeddings": 40960, "hidden_act": "silu", "attention_bias": False, "rope_scaling": None,
    "use_sliding_window": False,
}


def test_qwen3_0_6b_maps_to_megatron():
    a = qwen3_args_from_hf(QWEN3_0_6B, tp=2)
    c = a.config
    assert (c.num_layers, c.hidden_size, c.ffn_hidden_size) == (28, 1024, 3072)
    assert (c.num_attention_heads, c.num_query_groups, c.kv_channels) == (16, 8, 128)  # head_dim != hidden/heads
    assert c.qk_layernorm and c.gated_linear_unit and c.normalization == "RMSNorm" and c.layernorm_epsilon == 1e-6
    assert not c.add_bias_linear and not c.add_qkv_bias and c.tensor_model_parallel_size == 2
    assert (a.rotary_base, a.rotary_percent, a.tie_embeddings, a.vocab_size) == (1e6, 1.0, True, 151936)


def test_transformers5_rope_parameters_and_dtype():
    a = qwen3_args_from_hf(tiny_qwen3_config(rope_theta=12345.0).to_dict(), params_dtype=torch.bfloat16)
    assert a.rotary_base == 12345.0 and a.config.params_dtype == torch.bfloat16 and a.config.bf16


@pytest.mark.parametrize("change,needle", [
    ({"model_type": "llama"}, "'llama'"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
])
def test_unsupported_configs_are_refused(change, needle):
    with pytest.raises(ValueError, match=needle):
        qwen3_args_from_hf({**QWEN3_0_6B, **change}, source="some/config.json")


@pytest.mark.parametrize("tp,needle", [(3, "--tp 3 does not divide num_attention_heads"),
                                       (16, "--tp 16 does not divide num_key_value_heads")])
def test_tp_must_divide_heads_and_groups(tp, needle):
    with pytest.raises(ValueError, match=needle):
        qwen3_args_from_hf(QWEN3_0_6B, tp=tp)


def test_pp_must_divide_layers():
    with pytest.raises(ValueError, match="--pp 3 does not divide num_hidden_layers"):
        qwen3_args_from_hf(QWEN3_0_6B, pp=3)
