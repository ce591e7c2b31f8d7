"""LLaDA2 config.json → megatron TransformerConfig, and megatron's router == the LLaDA2 gate (§2.1, §9.22)."""

import pytest
import torch

from tests.reference.llada2_reference import LLaDA2MoeConfig, Router
from tide_megatron.distributed.grids import ParallelLayout
from tide_megatron.models.llada2.config import LLaDA2Config, LLaDA2ConfigError, UnsupportedRouterSetting

# The field values of the released LLaDA2.0-mini config.json (§2.1).
RELEASED = dict(
    architectures=["LLaDA2MoeModelLM"], model_type="llada2_moe", vocab_size=157184, hidden_size=2048,
    intermediate_size=5120, num_hidden_layers=20, num_attention_heads=16, num_key_value_heads=4, head_dim=128,
    rms_norm_eps=1e-6, rope_theta=600000, partial_rotary_factor=0.5, rotary_dim=64, num_experts=256,
    num_shared_experts=1, num_experts_per_tok=8, n_group=8, topk_group=4, routed_scaling_factor=2.5,
    moe_intermediate_size=512, first_k_dense_replace=1, norm_topk_prob=True, score_function="sigmoid",
    moe_router_enable_expert_bias=True, use_qk_norm=True, use_qkv_bias=False, use_bias=False,
    tie_word_embeddings=False, hidden_act="silu", rope_scaling=None, pad_token_id=156892,
)


def test_released_config_maps_to_megatron_moe_fields():
    cfg = LLaDA2Config.from_dict(RELEASED)
    tc = cfg.to_transformer_config(ParallelLayout(tp=2, ep=2), params_dtype=torch.bfloat16)
    assert (tc.num_layers, tc.hidden_size, tc.num_attention_heads, tc.num_query_groups, tc.kv_channels) == \
        (20, 2048, 16, 4, 128)
    assert tc.ffn_hidden_size == 5120 and tc.moe_ffn_hidden_size == 512
    assert tc.num_moe_experts == 256 and tc.moe_router_topk == 8
    assert tc.moe_router_score_function == "sigmoid" and tc.moe_router_enable_expert_bias
    assert (tc.moe_router_num_groups, tc.moe_router_group_topk) == (8, 4)
    assert tc.moe_router_topk_scaling_factor == 2.5
    assert tc.moe_shared_expert_intermediate_size == 512
    assert tc.moe_layer_freq == [0] + [1] * 19
    assert tc.qk_layernorm and tc.normalization == "RMSNorm" and tc.layernorm_epsilon == 1e-6
    assert tc.sequence_parallel  # MoE with TP > 1 needs it in megatron-core
    assert cfg.rotary_percent == 0.5 and cfg.rope_theta == 600000


@pytest.mark.parametrize("change, match", [
    (dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"]), "not an LLaDA2-MoE checkpoint"),
    (dict(score_function="softmax"), "score_function"),
    (dict(norm_topk_prob=False), "norm_topk_prob"),
    (dict(topk_group=2), "num_experts_per_tok // topk_group"),
    (dict(n_group=7), "n_group=7 does not divide"),
    (dict(moe_router_enable_expert_bias=False), "expert_bias"),
    (dict(rotary_dim=32), "rotary_dim=32 disagrees"),
    (dict(rope_scaling={"type": "yarn"}), "rope_scaling"),
    (dict(num_experts=None), "num_experts"),
])
def test_bad_config_gets_one_clear_error(change, match):
    with pytest.raises(LLaDA2ConfigError, match=match):
        LLaDA2Config.from_dict({**RELEASED, **change})


def test_router_setting_errors_are_their_own_type():
    with pytest.raises(UnsupportedRouterSetting):
        LLaDA2Config.from_dict({**RELEASED, "topk_group": 8})


def test_layout_errors_name_the_field():
    cfg = LLaDA2Config.from_dict(RELEASED)
    with pytest.raises(LLaDA2ConfigError, match="ep=3 does not divide num_experts=256"):
        cfg.check_layout(ParallelLayout(ep=3))
    with pytest.raises(LLaDA2ConfigError, match="tp=3"):
        cfg.check_layout(ParallelLayout(tp=3))


def test_megatron_router_equals_llada2_gate():
    """megatron-core's topk_routing_with_score_function, fed our mapped config, == the reference gate."""
    from megatron.core.transformer.moe.moe_utils import topk_routing_with_score_function

    ref_cfg = LLaDA2MoeConfig(hidden_size=32, num_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
                              routed_scaling_factor=2.5)
    router = Router(ref_cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        router.weight.copy_(torch.randn(router.weight.shape, generator=gen))
        router.expert_bias.copy_(0.5 * torch.randn(16, generator=gen))
    x = torch.randn(64, 32, generator=gen)
    chosen, weights = router(x)
    cfg = LLaDA2Config.from_dict({**RELEASED, "num_experts": 16, "num_experts_per_tok": 4, "n_group": 4,
                                  "topk_group": 2})
    tc = cfg.to_transformer_config(ParallelLayout(), params_dtype=torch.float32)
    logits = x @ router.weight.t()
    probs, routing_map = topk_routing_with_score_function(
        logits, tc.moe_router_topk, use_pre_softmax=tc.moe_router_pre_softmax, num_groups=tc.moe_router_num_groups,
        group_topk=tc.moe_router_group_topk, scaling_factor=tc.moe_router_topk_scaling_factor,
        score_function=tc.moe_router_score_function, expert_bias=router.expert_bias)
    dense_ref = torch.zeros(64, 16).scatter(1, chosen, weights)
    assert torch.equal(routing_map, dense_ref > 0)
    assert torch.allclose(probs, dense_ref, atol=1e-6)
    # The bias changes the selection but never the weights: without it the selection differs here.
    no_bias, _ = topk_routing_with_score_function(logits, 4, num_groups=4, group_topk=2, scaling_factor=2.5,
                                                  score_function="sigmoid", expert_bias=None)
    assert not torch.equal(no_bias > 0, routing_map)
