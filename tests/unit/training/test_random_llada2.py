"""`write_random_llada2_hf`: the random LLaDA2 directory the tools and benchmarks use is the released HF layout,
read by the trainer's teacher loader, and computes what the plain-PyTorch reference model computes from it."""

import json

import torch
from safetensors.torch import load_file

from tests.reference.llada2_reference import LLaDA2MoeConfig, LLaDA2MoeModelLM
from tide_megatron.distributed import init_distributed
from tide_megatron.demo.pretrain_teacher import TinyLLaDA2Shape, write_random_llada2_hf

VOCAB, MASK, PAD, EOS = 80, 79, 78, 77
SHAPE = TinyLLaDA2Shape(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=8, intermediate_size=48, num_experts=4, num_experts_per_tok=2,
                        moe_intermediate_size=16, n_group=2, topk_group=1)


def test_random_llada2_loads_through_teacher_loader_with_expected_shapes(tmp_path):
    from tide_megatron.config import TeacherConfig
    from tide_megatron.distributed.grids import ParallelLayout, build_model_grid
    from tide_megatron.training.models import build_teacher

    init_distributed("gloo")
    out = write_random_llada2_hf(tmp_path / "teacher", SHAPE, VOCAB, MASK, PAD, EOS, seed=4)
    config = json.loads((out / "config.json").read_text())
    assert (config["n_group"], config["topk_group"], config["eos_token_id"]) == (2, 1, EOS)
    assert not list(tmp_path.glob("*.tmp-partial"))
    tensors = load_file(str(out / "model.safetensors"))
    assert tensors["model.word_embeddings.weight"].shape == (VOCAB, 32)
    assert tensors["lm_head.weight"].shape == (VOCAB, 32)
    assert tensors["model.layers.0.attention.query_key_value.weight"].shape == ((4 + 2 * 2) * 8, 32)
    assert tensors["model.layers.0.mlp.gate_proj.weight"].shape == (48, 32)  # the dense first layer
    assert tensors["model.layers.1.mlp.experts.3.up_proj.weight"].shape == (16, 32)
    assert tensors["model.layers.1.mlp.shared_experts.down_proj.weight"].shape == (32, 16)
    assert tensors["model.layers.1.mlp.gate.expert_bias"].abs().sum() > 0  # random, not left at zero

    ref = LLaDA2MoeModelLM(LLaDA2MoeConfig(**{k: v for k, v in config.items()
                                              if k not in ("architectures", "model_type")})).eval()
    missing, unexpected = ref.load_state_dict(tensors, strict=False)
    assert not unexpected and all("inv_freq" in k for k in missing)
    grid = build_model_grid(ParallelLayout(), "random-llada2-reload")
    teacher = build_teacher(TeacherConfig(arch="llada2", checkpoint=str(out), dtype="fp32"), grid)
    assert teacher.mask_id == MASK and teacher.pad_id == PAD
    ids = torch.randint(0, VOCAB - 4, (2, 16), generator=torch.Generator().manual_seed(0))
    real = torch.ones_like(ids, dtype=torch.bool)
    real[1, 12:] = False
    with torch.no_grad():
        want = torch.log_softmax(ref(ids, attention_mask=real.long()).logits.float(), -1)
        got = teacher.engine.token_logprobs(ids, torch.where(real, ids, -1), real.long())
    want = want.gather(-1, ids[..., None])[..., 0]
    torch.testing.assert_close(got[real], want[real], rtol=1e-4, atol=1e-4)
