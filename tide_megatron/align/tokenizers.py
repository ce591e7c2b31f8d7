"""One loader for every tokenizer TIDE uses, with character offsets and byte-level token strings (spec §5.2).

`load_tokenizer(spec)` accepts a Hugging Face tokenizer directory (tokenizer.json) or file; GGUF vocabularies,
SentencePiece BPE `.model` files and the short names of real vocabularies shipped in registry packages (`qwen2`,
`gpt-2`, `llama-bpe`, `llama-spm`, `bert-bge`, `starcoder`, `phi-3`, `mistral-v1`) are converted to fast
tokenizers, and cached, by `fixtures/tokenizer_files.py`.

Byte-level token strings use the GPT-2 byte<->unicode map (one character per byte, "Ġ" = space), whatever the
tokenizer family: byte-level BPE tokens are already in that form; SentencePiece pieces map "▁" to a space and
`<0xNN>` byte-fallback pieces to their byte; WordPiece (which drops whitespace and may lowercase) takes its bytes
from the source text through the offsets, the whitespace before a token going to that token.

Mask token: if the tokenizer has none, `<|mask|>` is added as a special token at the end of the vocabulary
(so `mask_id == len(tokenizer) - 1`); the model's embedding must cover it.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, Sequence

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tide_megatron.fixtures.tokenizer_files import NAMED_VOCABS, is_vocab_file, load_named_vocab, load_vocab_file

TokenizerKind = Literal["byte_level", "sentencepiece", "wordpiece"]
MASK_TOKEN = "<|mask|>"

class TokenizerLoadError(ValueError):
    """The tokenizer spec names nothing loadable, or the tokenizer lacks something TIDE needs (offsets)."""


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (printable Latin-1 bytes map to themselves)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def to_byte_level(data: bytes) -> str:
    """Encode raw bytes as a byte-level string (one character per byte)."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def from_byte_level(text: str) -> bytes:
    """Inverse of `to_byte_level`."""
    table = unicode_to_bytes()
    return bytes(table[c] for c in text)


@dataclass
class Encoding:
    """Token ids of a text plus each token's [start, end) character span in that text."""

    ids: list[int]
    offsets: list[tuple[int, int]]


class TideTokenizer:
    """A fast Hugging Face tokenizer plus what TIDE needs: kind, special ids, offsets and byte-level strings."""

    def __init__(self, hf_tokenizer, name: str, eos_token: str | None = None, pad_token: str | None = None):
        if not getattr(hf_tokenizer, "is_fast", False):
            raise TokenizerLoadError(
                f"tokenizer {name!r}: a fast (Rust) tokenizer is required, because chunk alignment needs "
                "character offsets (return_offsets_mapping); got a slow tokenizer without offsets"
            )
        self.hf = hf_tokenizer
        self.name = name
        self.kind: TokenizerKind = _detect_kind(hf_tokenizer)
        self._ensure_mask_token()
        self.mask_id: int = self._id_of(self.hf.mask_token, "mask")
        eos = eos_token or self.hf.eos_token or self.hf.sep_token
        self.eos_id: int = self._id_of(eos, "eos")
        pad = pad_token or self.hf.pad_token or eos
        self.pad_id: int = self._id_of(pad, "pad")
        self.bos_id: int | None = self.hf.bos_token_id
        self._piece_cache: dict[int, str] = {}
        self._special_ids = set(self.hf.all_special_ids)

    # ---------------------------------------------------------------- ids
    def _ensure_mask_token(self) -> None:
        if self.hf.mask_token is not None:
            return
        vocab = self.hf.get_vocab()
        if MASK_TOKEN not in vocab:
            self.hf.add_special_tokens({"mask_token": MASK_TOKEN})
        else:
            self.hf.mask_token = MASK_TOKEN

    def _id_of(self, token: str | None, role: str) -> int:
        if token is None:
            raise TokenizerLoadError(f"tokenizer {self.name!r}: no {role} token; pass {role}_token=...")
        tid = self.hf.convert_tokens_to_ids(token)
        if tid is None or (tid == self.hf.unk_token_id and token != self.hf.unk_token):
            raise TokenizerLoadError(f"tokenizer {self.name!r}: {role} token {token!r} is not in the vocabulary")
        return int(tid)

    def __len__(self) -> int:
        return len(self.hf)

    def with_eos(self, token: str) -> "TideTokenizer":
        """A shallow copy whose eos is `token` (e.g. Qwen3's `<|im_end|>`, §1.1); the HF tokenizer is shared."""
        other = copy.copy(self)
        other.eos_id = self._id_of(token, "eos")
        return other

    @property
    def vocab_size(self) -> int:
        """Number of ids including added tokens (the embedding rows the model needs at least)."""
        return len(self.hf)

    def token_id(self, token: str) -> int | None:
        """Id of a single vocabulary entry, or None if the string is not one token."""
        tid = self.hf.convert_tokens_to_ids(token)
        if tid is None or (tid == self.hf.unk_token_id and token != self.hf.unk_token):
            return None
        return int(tid)

    # ---------------------------------------------------------------- encoding
    def encode(self, text: str) -> Encoding:
        """Tokenize `text` without adding BOS/EOS; special tokens written in the text are recognized."""
        enc = self.hf(text, add_special_tokens=False, return_offsets_mapping=True)
        return Encoding(list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]])

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def tokens(self, ids: Sequence[int]) -> list[str]:
        return self.hf.convert_ids_to_tokens(list(ids))

    # ---------------------------------------------------------------- byte-level strings (§5.2 step 1)
    def piece_bytes(self, token_id: int) -> str:
        """Byte-level string of one vocabulary entry, from the vocabulary alone (byte-level BPE, SentencePiece)."""
        cached = self._piece_cache.get(token_id)
        if cached is not None:
            return cached
        piece = self.hf.convert_ids_to_tokens(int(token_id))
        if token_id in self._special_ids or piece is None:
            out = to_byte_level((piece or "").encode("utf-8"))
        elif self.kind == "byte_level":
            table = unicode_to_bytes()
            out = piece if all(c in table for c in piece) else to_byte_level(piece.encode("utf-8"))
        elif self.kind == "sentencepiece":
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                out = bytes_to_unicode()[int(piece[3:5], 16)]
            else:
                out = to_byte_level(piece.replace("▁", " ").encode("utf-8"))
        else:
            raise TokenizerLoadError(f"tokenizer {self.name!r} ({self.kind}): byte strings need the source text")
        self._piece_cache[token_id] = out
        return out

    def byte_strings(self, ids: Sequence[int], offsets: Sequence[tuple[int, int]], text: str, start: int,
                     end: int | None = None) -> list[str]:
        """Byte-level strings of consecutive tokens of `text` whose span begins at character `start`.

        Vocabulary-based for byte-level BPE and SentencePiece; offset-based for WordPiece, where token k gets
        text[end_{k-1}:end_k] (leading whitespace joins the token, like "Ġ" in byte-level BPE) and the last
        token extends to `end` when given (trailing whitespace that has no token of its own).
        """
        if self.kind != "wordpiece":
            return [self.piece_bytes(i) for i in ids]
        out = []
        prev = start
        for k, (_, stop) in enumerate(offsets):
            if end is not None and k == len(offsets) - 1:
                stop = max(stop, end)
            out.append(to_byte_level(text[prev:stop].encode("utf-8")) if stop > prev else "")
            prev = max(prev, stop)
        return out

    # ---------------------------------------------------------------- chat template
    @property
    def chat_template(self) -> str | None:
        return getattr(self.hf, "chat_template", None) or None

    def __repr__(self) -> str:
        return (f"TideTokenizer({self.name!r}, kind={self.kind}, vocab={len(self)}, mask={self.mask_id}, "
                f"eos={self.eos_id}, pad={self.pad_id})")


def _detect_kind(hf_tokenizer) -> TokenizerKind:
    backend = hf_tokenizer.backend_tokenizer
    model = type(backend.model).__name__
    if model == "WordPiece":
        return "wordpiece"
    pre = repr(backend.pre_tokenizer) + repr(backend.decoder)
    if "ByteLevel" in pre:
        return "byte_level"
    if "Metaspace" in pre or "▁" in pre or "ByteFallback" in pre:
        return "sentencepiece"
    raise TokenizerLoadError(
        f"tokenizer model {model} with pre-tokenizer {backend.pre_tokenizer!r}: byte-level strings are defined "
        "for byte-level BPE, SentencePiece and WordPiece tokenizers only"
    )


# -------------------------------------------------------------------- loading
_LOADED: dict[tuple, TideTokenizer] = {}


def load_tokenizer(spec: str | os.PathLike, eos_token: str | None = None, pad_token: str | None = None,
                   cache: bool = True) -> TideTokenizer:
    """Load a tokenizer from a short name, a GGUF file, a SentencePiece `.model` or a HF tokenizer directory.

    Loaded tokenizers are kept per process (`cache=True`), so forked preprocessing workers and repeated loads
    share one instance; treat the returned object as read-only.
    """
    key = (str(spec), eos_token, pad_token)
    if cache and key in _LOADED:
        return _LOADED[key]
    tokenizer = _load_uncached(spec, eos_token, pad_token)
    if cache:
        _LOADED[key] = tokenizer
    return tokenizer


def _load_uncached(spec: str | os.PathLike, eos_token: str | None, pad_token: str | None) -> TideTokenizer:
    text = str(spec)
    if text in NAMED_VOCABS:
        return TideTokenizer(load_named_vocab(text), text, eos_token, pad_token)
    path = Path(text).expanduser()
    if not path.exists():
        raise TokenizerLoadError(
            f"tokenizer {text!r}: not a known name ({', '.join(sorted(NAMED_VOCABS))}) and no such file or directory"
        )
    if path.is_dir():
        if not (path / "tokenizer.json").exists() and not (path / "tokenizer.model").exists():
            raise TokenizerLoadError(f"{path}: expected tokenizer.json (or tokenizer.model) in the directory")
        hf = AutoTokenizer.from_pretrained(str(path))
    elif is_vocab_file(path):
        hf = load_vocab_file(path)
    elif path.suffix == ".json":
        hf = PreTrainedTokenizerFast(tokenizer_file=str(path))
    else:
        raise TokenizerLoadError(f"{path}: expected a directory, a .gguf, a SentencePiece .model or a tokenizer.json")
    return TideTokenizer(hf, text, eos_token, pad_token)
