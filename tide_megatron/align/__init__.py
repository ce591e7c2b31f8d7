"""Tokenizers, chat templates and cross-tokenizer alignment (chunks and pairs), spec §2.3-2.4, §4, §5."""

from tide_megatron.align.chunks import Chunk, chunk_byte_strings, teacher_cutoff
from tide_megatron.align.masking import (
    ChunkMasking,
    chunk_consistent_masking,
    project_chunk_set,
    project_mask_through_pairs,
)
from tide_megatron.align.tokenizers import TideTokenizer, load_tokenizer

__all__ = [
    "Chunk", "ChunkMasking", "TideTokenizer", "chunk_byte_strings", "chunk_consistent_masking", "load_tokenizer",
    "project_chunk_set", "project_mask_through_pairs", "teacher_cutoff",
]
