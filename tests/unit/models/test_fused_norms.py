"""Norms fused into the next linear as Transformer Engine's spec fuses them, built from local parts
(backend "local_fused"): every model's layers put each norm where megatron-core's TE spec puts it, the
converter loads the HF norm weights there, and the logits equal the unfused spec's (no norm applied twice,
none missing) at TP=1; the TP=2 case is in tests/multirank/test_fused_norms.py."""

import pytest
import torch
from megatron.core.models.gpt import gpt_layer_specs
from megatron.core.tensor_parallel.layers import ColumnParallelLinear
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.moe.moe_layer import MoELayer

from tests.reference.families import FAMILIES, write_family
from tide_megatron.distributed import ParallelLayout, build_model_grid
from tide_megatron.models.backend import LocalSDPASpecProvider, get_backend
from tide_megatron.models.convert.mcore_dir import hf_to_mcore, load_mcore_checkpoint
from tide_megatron.models.convert.weights import hf_tensors
from tide_megatron.models.layernorm_linear import FusedNormSpecProvider, LayerNormColumnParallelLinear
from tide_megatron.models.norms import TorchNorm
from tide_megatron.models.registry import get_architecture
from tide_megatron.models.safetensors_reader import SafetensorsReader
from tide_megatron.models.spec import dense_layer_spec


def _megatron_te_layer_spec(monkeypatch, provider, num_experts=None):
    """megatron-core 0.16.1's own TE layer spec, with `TESpecProvider` replaced by `provider` (same protocol)."""
    monkeypatch.setattr(gpt_layer_specs, "TESpecProvider", lambda: provider, raising=False)
    return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(num_experts=num_experts, qk_layernorm=True)


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_norms_sit_where_megatrons_te_spec_puts_them(monkeypatch, moe):
    provider = FusedNormSpecProvider(LocalSDPASpecProvider())
    theirs = _megatron_te_layer_spec(monkeypatch, provider, num_experts=8 if moe else None).submodules
    moe_mlp = theirs.mlp if moe else None
    ours = dense_layer_spec(provider, qk_layernorm=True, moe_mlp=moe_mlp).submodules
    assert ours.input_layernorm is theirs.input_layernorm is IdentityOp
    assert ours.self_attention.submodules.linear_qkv is theirs.self_attention.submodules.linear_qkv \
        is LayerNormColumnParallelLinear
    assert ours.self_attention.submodules.q_layernorm is theirs.self_attention.submodules.q_layernorm is TorchNorm
    if moe:  # TE's MoE layer has no fused norm: a separate pre-MLP norm
        assert ours.pre_mlp_layernorm is theirs.pre_mlp_layernorm is TorchNorm
        assert ours.mlp.module is theirs.mlp.module is MoELayer
    else:
        assert ours.pre_mlp_layernorm is theirs.pre_mlp_layernorm is IdentityOp
        assert ours.mlp.submodules.linear_fc1 is theirs.mlp.submodules.linear_fc1 is LayerNormColumnParallelLinear
    assert ours.sharded_state_dict_keys_map == {}


def test_unfused_layers_save_norms_under_the_fused_names_as_megatrons_local_spec_does():
    local = gpt_layer_specs.get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm").submodules
    ours = dense_layer_spec(LocalSDPASpecProvider(), qk_layernorm=True).submodules
    assert ours.input_layernorm is ours.pre_mlp_layernorm is TorchNorm
    assert ours.self_attention.submodules.linear_qkv is ColumnParallelLinear
    assert ours.sharded_state_dict_keys_map == local.sharded_state_dict_keys_map


def test_the_fused_provider_builds_on_local_linears_only():
    class Other(LocalSDPASpecProvider):
        def column_parallel_linear(self):
            return LayerNormColumnParallelLinear

    with pytest.raises(ValueError, match="local ColumnParallelLinear"):
        FusedNormSpecProvider(Other())
    assert get_backend("local_fused").fuse_layernorm_and_linear()


def _norm_keys(model) -> dict[str, list[str]]:
    """Per layer, the names of its norm tensors (QK-norms aside)."""
    out = {}
    for name in model.state_dict():
        if name.startswith("decoder.layers.") and "norm" in name and "q_layernorm" not in name \
                and "k_layernorm" not in name:
            layer, rest = name[len("decoder.layers."):].split(".", 1)
            out.setdefault(int(layer), []).append(rest)
    return out


def _logits(model, arch, vocab) -> dict[str, torch.Tensor]:
    cases = arch.verify_cases(vocab, 8, 4, 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        return {name: model(ids, pos, allowed) for name, (ids, pos, allowed) in cases.items()}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"fused_{request.param}")
    return request.param, write_family(request.param, root / "hf"), root


def test_fused_norm_logits_equal_unfused_through_the_converter(family):
    name, hf, root = family
    arch = get_architecture(name)
    with build_model_grid(ParallelLayout(), "fused") as grid:
        unfused, args, _ = arch.build_from_hf(hf, grid.pgs, torch.float32, backend="local")
        fused, _, _ = arch.build_from_hf(hf, grid.pgs, torch.float32, backend="local_fused")
        dense = {i for i, layer in enumerate(fused.decoder.layers) if not isinstance(layer.mlp, MoELayer)}
        for i, keys in _norm_keys(fused).items():
            want = {"self_attention.linear_qkv.layer_norm_weight",
                    "mlp.linear_fc1.layer_norm_weight" if i in dense else "pre_mlp_layernorm.weight"}
            assert set(keys) == want, (name, i, keys)
        assert all(set(k) == {"input_layernorm.weight", "pre_mlp_layernorm.weight"} for k in _norm_keys(unfused).values())

        want = _logits(unfused, arch, args.vocab_size)
        for case, got in _logits(fused, arch, args.vocab_size).items():
            torch.testing.assert_close(got, want[case], rtol=0, atol=1e-6, msg=f"{name} {case}")
        # megatron -> HF through the fused names gives back the HF tensors exactly
        reader = SafetensorsReader(hf)
        exported = dict(hf_tensors(fused, arch.mapping(args)))
        assert set(exported) == {k for k in reader.keys() if not arch.mapping(args).may_skip(k)}
        assert all(torch.equal(t, reader.get(k)) for k, t in exported.items())

        # one dist checkpoint loads on either backend (unfused layers save their norms under the fused names)
        for written, loaded in (("local", fused), ("local_fused", unfused)):
            mcore = str(root / f"mcore_{written}")
            hf_to_mcore(arch, hf, mcore, backend=written)
            with torch.no_grad():
                for p in loaded.parameters():
                    p.zero_()
            load_mcore_checkpoint(loaded, mcore)
            for case, got in _logits(loaded, arch, args.vocab_size).items():
                torch.testing.assert_close(got, want[case], rtol=0, atol=1e-6, msg=f"{name} {case} from {written}")
