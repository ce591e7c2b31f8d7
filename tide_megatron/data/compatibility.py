"""Does a preprocessed dataset fit this run? The one check, at start-up (spec §2.3-2.4, §6, §9.1).

``tide-preprocess`` writes a ``meta.json`` beside the dataset: the alignment (chunks or pairs), the student
length, the special ids and vocabulary sizes of both tokenizers, and a content fingerprint of each tokenizer
(`tokenizer_fingerprint`: vocabulary, merges and added/special tokens, hashed). `check_dataset` refuses a
dataset written for another mode, length or tokenizer, naming both fingerprints and both tokenizers; with the
models' vocabulary sizes it also checks that every dataset id has an embedding row. The training config runs
it before any model is built, the trainer again with the built models' vocabulary sizes.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from tide_megatron.align.tokenizers import TideTokenizer, load_tokenizer
from tide_megatron.errors import ConfigError

if TYPE_CHECKING:  # config.py imports this module; the type is only named here
    from tide_megatron.config import TrainConfig

#: Files whose bytes identify a tokenizer directory when it cannot be loaded (a last resort, see `same_tokenizer`).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "tokenizer_config.json")


def tokenizer_fingerprint(tokenizer: TideTokenizer) -> str:
    """A hash of what maps text to ids: the model's vocabulary and merges and the added (special) tokens with
    their ids, including an appended mask token. Equal for one tokenizer under any path or file layout."""
    state = json.loads(tokenizer.hf.backend_tokenizer.to_str())
    content = {"model": state.get("model"),
               "added_tokens": sorted((t["id"], t["content"], bool(t.get("special"))) for t in state.get("added_tokens") or []),
               "mask_id": tokenizer.mask_id}
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def fingerprint_of(spec: str) -> tuple[Optional[str], str]:
    """(fingerprint, "") of the tokenizer ``spec`` names (a registry name, file or directory), or (None, why)
    when it cannot be loaded. Cached per spec and modification time."""
    try:
        stamp = os.stat(spec).st_mtime_ns if os.path.exists(spec) else 0
        return _fingerprint(str(spec), stamp), ""
    except Exception as err:  # any loader failure means "cannot check", and says why
        return None, f"{type(err).__name__}: {err}"


@lru_cache(maxsize=16)
def _fingerprint(spec: str, stamp: int) -> str:
    return tokenizer_fingerprint(load_tokenizer(spec))


def _file_fingerprint(path: str) -> Optional[str]:
    """A hash of a tokenizer's files (for paths that no loader reads); None without a recognised file."""
    p = Path(path)
    files = [p] if p.is_file() else [p / n for n in _TOKENIZER_FILES if (p / n).exists()] if p.is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def same_tokenizer(a: str, b: str) -> Optional[bool]:
    """Whether two tokenizer references name one tokenizer: equal references, equal content fingerprints, or
    (when one cannot be loaded) equal tokenizer files. None when neither can be checked (never a guess)."""
    if a == b or os.path.abspath(os.path.expanduser(a)) == os.path.abspath(os.path.expanduser(b)):
        return True
    (fa, _), (fb, _) = fingerprint_of(a), fingerprint_of(b)
    if fa is not None and fb is not None:
        return fa == fb
    fa, fb = _file_fingerprint(a), _file_fingerprint(b)
    if fa is not None and fb is not None:
        return fa == fb
    return None


def read_dataset_meta(prefix: str) -> Optional[dict]:
    """The JSON metadata that ``tide-preprocess`` writes beside a dataset, or None if there is none."""
    for candidate in (Path(prefix) / "meta.json", Path(prefix + ".meta.json")):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except json.JSONDecodeError as err:
                raise ConfigError(f"data.train: dataset metadata {str(candidate)!r} is not valid JSON: {err}") from None
    return None


def check_dataset(meta: dict, cfg: "TrainConfig", where: str, student_vocab: Optional[int] = None,
                  teacher_vocab: Optional[int] = None) -> None:
    """Refuse (`ConfigError`) a dataset whose alignment, length or tokenizers do not fit ``cfg``; with the
    models' vocabulary sizes, also one whose ids have no embedding row. ``where`` names the dataset."""
    objective = cfg.objective
    dcfg = meta.get("config", {})
    if objective.needs_teacher and dcfg.get("align"):
        wanted = "chunks" if objective.chunk_level else "pairs"
        if dcfg["align"] != wanted:
            raise ConfigError(f"objective.mode: {objective.mode!r} needs a dataset aligned by {wanted}, but {where} "
                              f"was preprocessed with --align {dcfg['align']} (re-run tide-preprocess with --align "
                              f"{wanted})")
    if dcfg.get("student_max_len") not in (None, cfg.student.seq_length):
        raise ConfigError(f"student.seq_length: {cfg.student.seq_length} differs from the dataset's student_max_len "
                          f"{dcfg['student_max_len']} ({where})")
    sides = [("student", cfg.student)] + ([("teacher", cfg.teacher)] if objective.needs_teacher else [])
    for side, model_cfg in sides:
        _check_tokenizer(side, model_cfg.tokenizer_path, dcfg.get(f"{side}_tokenizer"),
                         (meta.get(side) or {}).get("fingerprint"), where)
    if objective.needs_teacher and not objective.chunk_level:
        _check_shared_tokenizer(meta, objective.mode, where)
    for side, vocab in (("student", student_vocab), ("teacher", teacher_vocab if objective.needs_teacher else None)):
        ids = (meta.get(side) or {}).get("vocab_size")
        if vocab is not None and ids is not None and ids > vocab:
            raise ConfigError(f"{side}.checkpoint: {vocab} embedding rows, but the dataset's {side} tokenizer has "
                              f"{ids} ids ({where})")


def _check_tokenizer(side: str, configured: str, recorded: Optional[str], recorded_fp: Optional[str],
                     where: str) -> None:
    """The configured tokenizer must be the one the dataset was written with (§9.1: silent wrong ids otherwise)."""
    if not configured or not (recorded or recorded_fp):
        return
    if recorded_fp is not None:
        found, why = fingerprint_of(configured)
        if found is None:
            warnings.warn(f"{side}.tokenizer: cannot load {configured!r} to check it against the tokenizer that wrote "
                          f"{where} ({recorded!r}, fingerprint {recorded_fp}): {why}; set {side}.tokenizer to "
                          f"that tokenizer to check it", UserWarning, stacklevel=3)
        elif found != recorded_fp:
            raise ConfigError(f"{side}.tokenizer: {configured!r} (fingerprint {found}) is not the tokenizer that wrote "
                              f"{where} ({recorded!r}, fingerprint {recorded_fp}); point {side}.tokenizer at that "
                              f"tokenizer, or re-run tide-preprocess with this one")
        return
    same = same_tokenizer(recorded, configured)  # a dataset written before tokenizers were fingerprinted
    if same is False:
        raise ConfigError(f"{side}.tokenizer: {configured!r} is not the tokenizer that wrote {where} (the dataset "
                          f"records {recorded!r})")
    if same is None:
        warnings.warn(f"{side}.tokenizer: cannot check {configured!r} against {recorded!r}, the tokenizer that wrote "
                      f"{where} (its meta.json has no tokenizer fingerprints; re-run tide-preprocess to record them)",
                      UserWarning, stacklevel=3)


def _check_shared_tokenizer(meta: dict, mode: str, where: str) -> None:
    """Token-level modes compare logits id by id: the dataset's two sides must share one tokenizer (§6)."""
    dcfg = meta.get("config", {})
    s_fp, t_fp = (meta.get("student") or {}).get("fingerprint"), (meta.get("teacher") or {}).get("fingerprint")
    s_tok, t_tok = dcfg.get("student_tokenizer"), dcfg.get("teacher_tokenizer")
    if s_fp is not None and t_fp is not None:
        differ = s_fp != t_fp
    else:
        differ = bool(s_tok and t_tok) and same_tokenizer(s_tok, t_tok) is False
    if differ:
        raise ConfigError(f"objective.mode: {mode!r} is token-level, but {where} pairs two different tokenizers "
                          f"({s_tok!r}, {t_tok!r}); use a chunk mode")
