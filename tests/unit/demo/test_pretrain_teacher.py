"""Teacher pretraining (masked diffusion on the LLaDA2 MoE) and its HF export, against independent references:
the plain-PyTorch LLaDA2 reference model, the full-logits `bd3lm_ce`, and the trainer's own teacher loader."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.reference.llada2_reference import LLaDA2MoeConfig, LLaDA2MoeModelLM
from tide_megatron.distributed import init_distributed
from tide_megatron.losses.ce import bd3lm_ce
from tide_megatron.models.llada2.model import forward_llada2
from tide_megatron.demo.pretrain_teacher import (TeacherPretrainConfig, TinyLLaDA2Shape, export_llada2_hf,
                                                     llada2_hf_config, masked_diffusion_loss, padded_batch,
                                                     pretrain_llada2_teacher)
from tide_megatron.diffusion.noise import IGNORE_INDEX, mask_tokens, sample_t

VOCAB, MASK, PAD = 96, 95, 94
SHAPE = TinyLLaDA2Shape(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                        intermediate_size=48, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)


@pytest.fixture(scope="module")
def hf_config():
    init_distributed("gloo")
    return llada2_hf_config(SHAPE, VOCAB, MASK, PAD, PAD)


def _sequences(n=24, seed=0):
    """Learnable data: each sequence repeats a short random motif (so masked tokens are predictable)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        motif = torch.randint(0, 40, (3,), generator=gen).tolist()
        length = int(torch.randint(9, 24, (1,), generator=gen))
        out.append((motif * 8)[:length])
    return out


@pytest.fixture(scope="module")
def trained(hf_config):
    cfg = TeacherPretrainConfig(steps=40, micro_batch_size=8, lr=1e-2, min_lr=1e-3, warmup_ratio=0.05, seed=1)
    return pretrain_llada2_teacher(hf_config, _sequences(), cfg)


def test_masked_only_loss_equals_full_logits_ce(trained):
    """The masked-rows LM head path gives the spec's loss: bd3lm_ce over full logits with the same noise."""
    model, _ = trained
    ids, real = padded_batch(_sequences(6, seed=5), PAD, 64)
    got, n_masked = masked_diffusion_loss(model, ids, real, MASK, torch.Generator().manual_seed(3), 1e-3)
    gen = torch.Generator().manual_seed(3)
    t = sample_t(ids.shape[0], 1e-3, gen)
    xt, masked = mask_tokens(ids, torch.where(real, ids, IGNORE_INDEX), t, MASK, gen)
    with torch.no_grad():
        want = bd3lm_ce(forward_llada2(model, xt, real.long()), ids, masked, real, t)
    assert n_masked == int(masked.sum()) > 0
    assert not bool(masked[~real].any())  # padding is never masked
    torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-5)


def test_pretraining_lowers_the_masked_diffusion_loss(trained):
    _, result = trained
    losses = [v for _, v in result.losses]
    assert len(losses) == 40 and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.75 * first, (first, last)


def test_hf_export_matches_reference_model_and_trainer_loader(trained, hf_config, tmp_path):
    """The exported directory is the released LLaDA2 layout: the plain reference model built from it gives
    the megatron teacher's logits (bidirectional, key padding), and the trainer's loader reads it back exactly."""
    from tide_megatron.config import TeacherConfig
    from tide_megatron.distributed.grids import ParallelLayout, build_model_grid
    from tide_megatron.training.models import build_teacher

    model, _ = trained
    out = export_llada2_hf(model, hf_config, str(tmp_path / "teacher"))
    assert json.loads((tmp_path / "teacher" / "config.json").read_text())["mask_token_id"] == MASK
    assert not list(tmp_path.glob("*.tmp-partial"))

    ref = LLaDA2MoeModelLM(LLaDA2MoeConfig(**{k: v for k, v in hf_config.items()
                                              if k not in ("architectures", "model_type")}))
    missing, unexpected = ref.load_state_dict(load_file(f"{out}/model.safetensors"), strict=False)
    assert not unexpected and all("inv_freq" in k for k in missing)
    ids, real = padded_batch(_sequences(3, seed=9), PAD, 64)
    with torch.no_grad():
        want = ref.eval()(ids, attention_mask=real.long()).logits
        got = forward_llada2(model, ids, real.long())
        assert (got - want)[real].abs().max() < 1e-4
        # the expert bias learned by the load balancing is exported too (not left at zero)
        assert any(v.abs().sum() > 0 for k, v in ref.state_dict().items() if k.endswith("expert_bias"))

        grid = build_model_grid(ParallelLayout(), "reload")
        teacher = build_teacher(TeacherConfig(arch="llada2", checkpoint=out, dtype="fp32"), grid)
        targets = torch.where(real, ids, -1)
        again = teacher.engine.token_logprobs(ids, targets, real.long())  # the payload the trainer uses
    assert teacher.mask_id == MASK and teacher.pad_id == PAD
    want_logp = torch.log_softmax(got.float(), -1).gather(-1, ids[..., None])[..., 0]
    torch.testing.assert_close(again[real], want_logp[real], rtol=1e-5, atol=1e-5)


def test_bad_settings_are_named(hf_config):
    with pytest.raises(ValueError, match="micro_batch_size"):
        TeacherPretrainConfig(micro_batch_size=0)
    with pytest.raises(ValueError, match="fewer than one micro-batch"):
        pretrain_llada2_teacher(hf_config, _sequences(2), TeacherPretrainConfig(steps=1, micro_batch_size=4))
