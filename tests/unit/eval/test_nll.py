"""Bits per byte (BD3LM NELBO) on held-out text: exact cases, unbiasedness, tokenizer independence."""

import math

import pytest
import torch

from tide_megatron.eval.nll import Window, bits_per_byte, split_windows, tokenize_with_bytes

class Unigram(torch.nn.Module):
    """Context-free LM: the same log-probabilities at every position (an exact reference NLL)."""

    def __init__(self, logp):
        super().__init__()
        self.logp = torch.as_tensor(logp, dtype=torch.float)

    def forward(self, ids, position_ids, mask):
        return self.logp.expand(*ids.shape, -1)


def _alphabet_windows(tokens_per_char, n_windows, seq_len, alphabet=4, seed=0):
    """Random text over `alphabet` one-byte chars, tokenized into tokens of `tokens_per_char` chars."""
    g = torch.Generator().manual_seed(seed)
    chars = torch.randint(0, alphabet, (n_windows * seq_len * tokens_per_char,), generator=g)
    ids = (chars.view(-1, tokens_per_char) * alphabet ** torch.arange(tokens_per_char)).sum(1).tolist()
    return split_windows(Window(ids, [tokens_per_char] * len(ids)), seq_len)


@pytest.mark.parametrize("chars_per_token", [1, 2])
def test_a_uniform_model_gives_log2_alphabet_bits_per_byte_whatever_the_tokenizer(chars_per_token):
    alphabet = 4
    vocab = alphabet ** chars_per_token + 1  # + the mask id, given no probability mass
    logp = torch.full((vocab,), -math.log(alphabet ** chars_per_token))
    logp[-1] = -1e9
    windows = _alphabet_windows(chars_per_token, 8, 16)
    rep = bits_per_byte(Unigram(logp), windows, mask_id=vocab - 1, block_size=4, draws=64)
    assert rep.masked_bpb == pytest.approx(math.log2(alphabet), rel=1e-6)
    assert rep.elbo_bpb == pytest.approx(math.log2(alphabet), rel=0.05)  # Monte Carlo, unbiased
    assert rep.bytes == 8 * 16 * chars_per_token


def test_elbo_is_unbiased_for_a_non_uniform_context_free_model():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0])
    logp = torch.log(probs.clamp_min(1e-30))
    windows = _alphabet_windows(1, 16, 32, seed=3)
    exact_bits = sum(-math.log2(probs[i]) for w in windows for i in w.ids) / sum(len(w.ids) for w in windows)
    rep = bits_per_byte(Unigram(logp), windows, mask_id=4, block_size=8, draws=128, seed=1)
    assert rep.elbo_bpb == pytest.approx(exact_bits, rel=0.03)


def test_tokenize_with_bytes_attributes_every_utf8_byte():
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    corpus = ["def héllo(wörld):\n    return 'ünïcode ✓'\n"] * 20
    tok.train_from_iterator(corpus, tokenizers.trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    text = "def f(x):  # café ✓ naïve\n    return x * 2\n"
    doc = tokenize_with_bytes(fast, text)
    assert sum(doc.token_bytes) == len(text.encode("utf-8"))
    assert len(doc.token_bytes) == len(doc.ids) and min(doc.token_bytes) >= 0


def test_bad_windows_are_refused():
    with pytest.raises(ValueError, match="block_size"):
        bits_per_byte(Unigram(torch.zeros(3)), [Window([0, 1, 2], [1, 1, 1])], mask_id=2, block_size=2)
    with pytest.raises(ValueError, match="no held-out window"):
        bits_per_byte(Unigram(torch.zeros(3)), [], mask_id=2, block_size=2)
