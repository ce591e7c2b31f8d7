"""One loader for every tokenizer TIDE uses, with character offsets and byte-level token strings (spec §5.2).

`load_tokenizer(spec)` accepts a Hugging Face tokenizer directory (tokenizer.json), a GGUF vocabulary, a
SentencePiece BPE `.model` file, or a short name of a real vocabulary shipped in a registry package (`qwen2`,
`gpt-2`, `llama-bpe`, `llama-spm`, `bert-bge`, `starcoder`, `phi-3`, `mistral-v1`; see `artifacts.py`).
Conversions that are slow (the 151k-entry Qwen GGUF takes 12-33 s through transformers) are cached as a
tokenizer.json directory in the artifact cache.

Byte-level token strings use the GPT-2 byte<->unicode map (one character per byte, "Ġ" = space), whatever the
tokenizer family: byte-level BPE tokens are already in that form; SentencePiece pieces map "▁" to a space and
`<0xNN>` byte-fallback pieces to their byte; WordPiece (which drops whitespace and may lowercase) takes its bytes
from the source text through the offsets, the whitespace before a token going to that token.

Mask token: if the tokenizer has none, `<|mask|>` is added as a special token at the end of the vocabulary
(so `mask_id == len(tokenizer) - 1`); the model's embedding must cover it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, Sequence

from tide_megatron.align import artifacts
from tide_megatron.atomic import publish

TokenizerKind = Literal["byte_level", "sentencepiece", "wordpiece"]
MASK_TOKEN = "<|mask|>"

NAMED_VOCABS = {
    "qwen2": ("gguf", "qwen2"),
    "gpt-2": ("gguf", "gpt-2"),
    "gpt2": ("gguf", "gpt-2"),
    "llama-bpe": ("gguf", "llama-bpe"),
    "llama-spm": ("gguf", "llama-spm"),
    "bert-bge": ("gguf", "bert-bge"),
    "starcoder": ("gguf", "starcoder"),
    "phi-3": ("gguf", "phi-3"),
    "mistral-v1": ("spm", "tokenizer.model.v1"),
}


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
        import copy

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
def _converted_dir(source: Path) -> Path:
    st = source.stat()
    key = hashlib.sha1(f"{source.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return artifacts.cache_dir() / "tokenizers" / f"{source.name}-{key}"


def _save_atomically(hf_tokenizer, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".convert-") as tmp:
        staged = Path(tmp) / "tok"
        hf_tokenizer.save_pretrained(str(staged))
        publish(staged, final, replace=False)  # a concurrent conversion may have filled the cache first


def _load_gguf(path: Path):
    """GGUF vocabulary -> fast HF tokenizer; transformers' GGUF reader, or our WordPiece builder for BERT."""
    from transformers import AutoTokenizer

    cached = _converted_dir(path)
    if (cached / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(cached))
    model = _gguf_field(path, "tokenizer.ggml.model")
    if model == "bert":
        tok = _wordpiece_from_gguf(path)
    else:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        if model == "llama" and _gguf_field(path, "tokenizer.ggml.add_space_prefix") is not False:
            _use_sentencepiece_dummy_prefix(tok)
    _save_atomically(tok, cached)
    return AutoTokenizer.from_pretrained(str(cached))


def _use_sentencepiece_dummy_prefix(hf_tokenizer) -> None:
    """Make a converted SentencePiece tokenizer add the dummy "▁" prefix like sentencepiece/llama.cpp do.

    transformers' GGUF conversion uses Metaspace(prepend_scheme="first"), which skips the prefix when the text
    already starts with a space; the reference ids (.inp/.out) expect " Hello" -> ["▁", "▁Hello"].
    """
    from tokenizers import normalizers

    backend = hf_tokenizer.backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None


def _gguf_field(path: Path, key: str):
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    field = reader.fields.get(key)
    if field is None:
        return None
    return _field_value(field)


def _field_value(field):
    kinds = [t.name for t in field.types]
    if kinds[0] == "ARRAY":
        if kinds[-1] == "STRING":
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    part = field.parts[field.data[0]]
    return bytes(part).decode("utf-8") if kinds[0] == "STRING" else part.tolist()[0]


def _wordpiece_from_gguf(path: Path):
    """Build a BERT WordPiece fast tokenizer from a GGUF vocabulary (transformers cannot read BERT GGUFs)."""
    from gguf import GGUFReader
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    fields = GGUFReader(str(path)).fields
    tokens = _field_value(fields["tokenizer.ggml.tokens"])
    types = _field_value(fields["tokenizer.ggml.token_type"])
    # llama.cpp stores BERT vocabularies SentencePiece-style: word-initial pieces carry "▁", continuations are
    # bare. Back to WordPiece: "▁x" -> "x", "x" -> "##x"; control/unused entries (type != 1 or [..]) unchanged.
    wordpiece = []
    for tok, kind in zip(tokens, types):
        if tok.startswith("▁"):
            wordpiece.append(tok[1:])
        elif kind != 1 or (tok.startswith("[") and tok.endswith("]")):
            wordpiece.append(tok)
        else:
            wordpiece.append("##" + tok)
    vocab = {t: i for i, t in enumerate(wordpiece)}
    tokens = wordpiece

    def special(key: str) -> str | None:
        return tokens[_field_value(fields[key])] if key in fields else None

    unk = special("tokenizer.ggml.unknown_token_id") or "[UNK]"
    backend = Tokenizer(WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=unk,
        sep_token=special("tokenizer.ggml.seperator_token_id"),
        pad_token=special("tokenizer.ggml.padding_token_id"),
        cls_token=special("tokenizer.ggml.cls_token_id"),
        mask_token=special("tokenizer.ggml.mask_token_id"),
    )


def _sentencepiece_bpe_to_fast(path: Path):
    """Build a fast tokenizer equal to sentencepiece's BPE: merges ranked by the merged piece's score.

    transformers' LlamaTokenizer conversion ranks merges differently and splits runs of spaces unlike
    sentencepiece (e.g. indentation before a quote), which would change ids on most code snippets.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_base import generate_merges

    proto = pb.ModelProto()
    proto.ParseFromString(path.read_bytes())
    if proto.trainer_spec.model_type != pb.TrainerSpec.BPE:
        raise TokenizerLoadError(f"{path}: only SentencePiece BPE models are supported (got model_type "
                                 f"{pb.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)})")
    pieces = list(proto.pieces)
    vocab = {p.piece: i for i, p in enumerate(pieces)}
    normal = {p.piece: p.score for p in pieces if p.type == pb.ModelProto.SentencePiece.NORMAL}
    merges = generate_merges(vocab, normal)
    unk = pieces[proto.trainer_spec.unk_id].piece
    backend = Tokenizer(BPE(vocab, merges, unk_token=unk, fuse_unk=True,
                            byte_fallback=proto.trainer_spec.byte_fallback))
    prefix = [normalizers.Prepend("▁")] if proto.normalizer_spec.add_dummy_prefix else []
    backend.normalizer = normalizers.Sequence(prefix + [normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1 if prefix else 0, 0)])
    control = [p.piece for p in pieces if p.type == pb.ModelProto.SentencePiece.CONTROL]
    backend.add_special_tokens([AddedToken(c, special=True, normalized=False) for c in control])
    def piece(i: int) -> str | None:
        return pieces[i].piece if 0 <= i < len(pieces) else None

    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=unk, bos_token=piece(proto.trainer_spec.bos_id),
                                   eos_token=piece(proto.trainer_spec.eos_id), pad_token=piece(proto.trainer_spec.pad_id))


def _load_sentencepiece(path: Path):
    """SentencePiece BPE `.model` -> fast HF tokenizer, cached as tokenizer.json."""
    from transformers import AutoTokenizer

    cached = _converted_dir(path)
    if not (cached / "tokenizer.json").exists():
        _save_atomically(_sentencepiece_bpe_to_fast(path), cached)
    return AutoTokenizer.from_pretrained(str(cached))


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
    from transformers import AutoTokenizer

    text = str(spec)
    if text in NAMED_VOCABS:
        family, name = NAMED_VOCABS[text]
        if family == "gguf":
            hf = _load_gguf(artifacts.gguf_vocab_path(name))
        else:
            hf = _load_sentencepiece(artifacts.fetch_source("mistral-spm") / name)
        return TideTokenizer(hf, text, eos_token, pad_token)
    path = Path(text).expanduser()
    if not path.exists():
        raise TokenizerLoadError(
            f"tokenizer {text!r}: not a known name ({', '.join(sorted(NAMED_VOCABS))}) and no such file or directory"
        )
    if path.is_dir():
        if not (path / "tokenizer.json").exists() and not (path / "tokenizer.model").exists():
            raise TokenizerLoadError(f"{path}: expected tokenizer.json (or tokenizer.model) in the directory")
        hf = AutoTokenizer.from_pretrained(str(path))
    elif path.suffix == ".gguf":
        hf = _load_gguf(path)
    elif path.suffix == ".model" or path.name.startswith("tokenizer.model"):
        hf = _load_sentencepiece(path)
    elif path.suffix == ".json":
        from transformers import PreTrainedTokenizerFast

        hf = PreTrainedTokenizerFast(tokenizer_file=str(path))
    else:
        raise TokenizerLoadError(f"{path}: expected a directory, a .gguf, a SentencePiece .model or a tokenizer.json")
    return TideTokenizer(hf, text, eos_token, pad_token)
