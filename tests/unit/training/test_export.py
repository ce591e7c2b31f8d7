"""Export of a trained student (a real trainer checkpoint) to an HF Qwen3 directory: transformers' own
`Qwen3ForCausalLM` built from the directory gives the megatron student's logits under the same explicit
block-diffusion mask, the tokenizer travels with it, and bad inputs get one clear error."""

import json
import os

import pytest
import torch

from tide_megatron.config import PrecisionConfig, StudentConfig, config_from_dict, dump_config
from tide_megatron.diffusion.masks import block_diffusion_mask
from tide_megatron.distributed import init_distributed, seed_model_parallel_rng
from tide_megatron.distributed.grids import ParallelLayout, build_model_grid
from tide_megatron.losses.ce import bd3lm_ce
from tide_megatron.models.llada2.model import ensure_megatron_runtime
from tide_megatron.models.convert.reference import load_hf_reference
from tide_megatron.models.convert.verify import hf_additive_mask
from tide_megatron.models.qwen3.tiny import save_tiny_qwen3
from tide_megatron.training.checkpoint import CheckpointError, TrainState, save_checkpoint
from tide_megatron.training.export import export_student
from tide_megatron.training.models import build_student
from tide_megatron.config import OptimConfig
from tide_megatron.training.optimizer import build_lr_scheduler, build_optimizer, reduce_gradients, wrap_ddp

VOCAB, L, BLOCK = 128, 8, 4


def _save_tokenizer(directory: str) -> None:
    """A small real fast tokenizer (word level) with a mask token, saved with the checkpoint."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB - 3)} | {"<unk>": VOCAB - 3, "<eos>": VOCAB - 2, "<|mask|>": VOCAB - 1}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>",
                            mask_token="<|mask|>").save_pretrained(directory)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trainer checkpoint after one real optimizer step of the BD3LM loss, and the live student."""
    init_distributed("gloo")
    root = tmp_path_factory.mktemp("export")
    hf_dir = str(root / "student_init")
    save_tiny_qwen3(hf_dir, seed=2, vocab_size=VOCAB, mask_token_id=VOCAB - 1)
    _save_tokenizer(hf_dir)
    cfg = config_from_dict({"student": {"checkpoint": hf_dir, "seq_length": L, "block_size": BLOCK},
                            "precision": {"dtype": "fp32"}, "objective": {"mode": "ce"}})
    grid = build_model_grid(ParallelLayout(), "student")
    ensure_megatron_runtime(grid.pgs)
    seed_model_parallel_rng(0)
    student = build_student(StudentConfig(checkpoint=hf_dir, seq_length=L, block_size=BLOCK),
                            PrecisionConfig(dtype="fp32"), grid)
    ddp = wrap_ddp(student.model, grid.pgs)
    optim = OptimConfig(lr=5e-2, train_steps=1, warmup_ratio=0.0, lr_schedule="constant")
    optimizer = build_optimizer(ddp, optim, grid.pgs, bf16=False)
    scheduler = build_lr_scheduler(optimizer, optim, 1)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, VOCAB - 1, (2, L), generator=gen)
    masked = torch.rand(2, L, generator=gen) < 0.5
    xt = torch.where(masked, VOCAB - 1, x0)
    ids, pos = torch.cat([xt, x0], 1), torch.arange(L).repeat(2).expand(2, -1)
    before = {k: v.detach().clone() for k, v in student.model.state_dict().items() if "_extra_state" not in k}
    ddp.zero_grad_buffer()
    logits = ddp(ids, pos, block_diffusion_mask(L, BLOCK, "xt_x0"), logits_rows=slice(0, L))
    bd3lm_ce(logits, x0, masked, torch.ones_like(masked), torch.full((2,), 0.5)).backward()
    reduce_gradients(ddp, grid.pgs)
    optimizer.step()
    ckpt_root = str(root / "checkpoints")
    save_checkpoint(ckpt_root, ddp, optimizer, scheduler, TrainState(step=1, total_steps=1), grid.pgs,
                    dump_config(cfg))
    return {"root": root, "ckpt_root": ckpt_root, "model": student.model.eval(), "before": before}


def _block_diffusion_inputs(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, 2 * L), generator=gen)
    return ids, torch.arange(L).repeat(2).expand(2, -1), block_diffusion_mask(L, BLOCK, "xt_x0")


def test_export_gives_the_trained_students_logits_in_transformers(run):
    out = export_student(run["ckpt_root"], str(run["root"] / "hf"))  # the root: its newest step
    files = set(os.listdir(out))
    assert {"config.json", "tokenizer.json", "model.safetensors.index.json"} <= files
    assert not any(f.endswith("tmp-partial") for f in os.listdir(run["root"]))

    hf = load_hf_reference(out)
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    ids, pos, allowed = _block_diffusion_inputs()
    with torch.no_grad():
        ours = run["model"](ids, pos, allowed).float()
        theirs = hf(input_ids=ids, position_ids=pos, attention_mask=hf_additive_mask(allowed, 2)).logits.float()
    assert (ours - theirs).abs().max() < 1e-4
    # the optimizer step moved the weights, and the export carries the moved ones, not the initial ones
    trained = run["model"].state_dict()["embedding.word_embeddings.weight"]
    assert (trained - run["before"]["embedding.word_embeddings.weight"]).abs().max() > 1e-3
    torch.testing.assert_close(hf.model.embed_tokens.weight, trained, rtol=0, atol=0)

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.mask_token_id == VOCAB - 1 and json.loads((run["root"] / "hf" / "config.json").read_text())[
        "mask_token_id"] == VOCAB - 1


def test_export_cli_and_errors(run, tmp_path, capsys):
    from tide_megatron.cli.convert import main

    step = os.path.join(run["ckpt_root"], "step_0000001")
    assert main(["export", "--checkpoint", step, "--hf-dir", str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    from safetensors import safe_open

    shard = [f for f in os.listdir(tmp_path / "bf16") if f.endswith(".safetensors")][0]
    with safe_open(str(tmp_path / "bf16" / shard), "pt") as fh:
        assert all(fh.get_tensor(k).dtype == torch.bfloat16 for k in fh.keys())

    assert main(["export", "--checkpoint", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "--checkpoint" in err and "no such directory" in err
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a trainer checkpoint"):
        export_student(str(tmp_path / "empty"))
    with pytest.raises(FileExistsError):
        export_student(step, str(tmp_path / "bf16"))  # never overwrites an existing directory
