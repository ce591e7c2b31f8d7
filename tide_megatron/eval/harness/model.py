"""``tide_bd3lm``: a BD3LM student as an lm-evaluation-harness model (spec §7.2-§7.3).

    lm_eval --model tide_bd3lm --model_args pretrained=DIR[,max_new_tokens=256,steps=256,...] --tasks ...

- ``generate_until`` decodes with the block sampler (``diffusion/sampler.py``: block 32, transfer
  schedule, low-confidence remasking) through the denoisers of ``eval/models.py``: transformers'
  Qwen3 with its prefix KV cache for an HF export, the megatron-core student (static KV cache on the
  local backend) for a ``tide-convert`` directory. Requests with the same settings run in batches
  (left padding, logical positions); each output has its think spans stripped and is cut at the
  task's stop strings (§7.2).
- ``loglikelihood`` / ``loglikelihood_rolling`` return the masked-diffusion bound (``eval/nll.py``).
- Data parallel: under torchrun (or srun) the rank and world size come from torch.distributed, the
  harness gives each rank its share of the documents and gathers the results on rank 0.

Generation length and steps: an explicit ``max_new_tokens`` / ``steps`` model argument applies to
every task (as in the reference's run script); otherwise the task's ``max_gen_toks`` (or 256), with
steps = the generation length unless ``steps`` is in the request's generation kwargs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm
from transformers import AutoConfig, AutoTokenizer

from tide_megatron.diffusion.sampler import BlockDenoiser, SamplerConfig, bd3lm_generate
from tide_megatron.eval.models import HFDenoiser, load_mcore_student
from tide_megatron.eval.nll import conditional_nelbo, greedy_matches
from tide_megatron.eval.prompts import (chat_template_of, cut_at_stops, decode_completion, render_chat,
                                        stop_token_ids)
from tide_megatron.models.convert.reference import load_hf_reference

logger = logging.getLogger(__name__)
MODEL_NAME = "tide_bd3lm"
DEFAULT_MAX_NEW_TOKENS = 256
STUDENT_MODEL_TYPES = ("qwen3",)  # the BD3LM student architecture (§1.1)


class ModelArgError(ValueError):
    """A model argument (``--model_args`` key) or generation setting is wrong; the message names it."""


@dataclass(frozen=True)
class GenerationSettings:
    """What one ``generate_until`` request asks for, resolved against the model arguments."""

    max_new_tokens: int
    steps: int
    temperature: float
    until: tuple[str, ...]


def _positive_int(value: Any, name: str, where: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number < 1 or number != float(value):
        raise ModelArgError(f"{where}: {name} must be a positive integer, got {value!r}")
    return number


def _request_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed from ``seed`` and the request's content: the same on every rank and in every batch."""
    digest = hashlib.sha256(json.dumps([seed, *parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@register_model(MODEL_NAME)
class TideBD3LM(TemplateLM):
    """A BD3LM student (HF export or ``tide-convert`` megatron directory) for the harness.

    Model arguments: ``pretrained`` (checkpoint directory), ``tokenizer`` (default: the checkpoint's),
    ``dtype`` (auto | float32 | bfloat16), ``device``, ``batch_size``, ``block_size`` (32),
    ``max_new_tokens`` and ``steps`` (see the module docstring), ``temperature`` (0 = greedy),
    ``mc_draws`` (Monte Carlo draws of the likelihood bound, 8), ``seed`` (42), ``mask_id`` / ``eos_id`` /
    ``pad_id`` (default: the tokenizer's), ``max_length`` (prompt + generation tokens kept, 4096),
    ``kv_cache_slots`` (megatron static KV cache length; 0 = re-encode the prefix each step),
    ``data_parallel`` (True: one shard of the documents per rank under torchrun), ``cfg_scale`` (only 0).

    Programmatic use may pass ``denoiser``, ``full_forward`` and ``tokenizer`` objects instead of a
    directory (a model that is already loaded, or a test model).
    """

    def __init__(self, pretrained: Optional[str] = None, tokenizer: Any = None, *, denoiser: Optional[BlockDenoiser] = None,
                 full_forward: Optional[Callable] = None, vocab_size: Optional[int] = None, dtype: str = "auto",
                 device: Optional[str] = None, batch_size: Any = 1, max_batch_size: Any = None, block_size: Any = 32,
                 max_new_tokens: Any = None, steps: Any = None, temperature: Any = 0.0, mc_draws: Any = 8,
                 seed: Any = 42, mask_id: Any = None, eos_id: Any = None, pad_id: Any = None, max_length: Any = 4096,
                 kv_cache_slots: Any = None, data_parallel: bool = True, cfg_scale: Any = 0.0, **unknown: Any):
        super().__init__()
        where = f"--model_args of {MODEL_NAME}"
        if unknown:
            raise ModelArgError(f"{where}: unknown argument(s) {sorted(unknown)}; see docs/EVALUATION.md for the list")
        if float(cfg_scale) != 0.0:
            raise ModelArgError(f"{where}: cfg_scale={cfg_scale}: classifier-free guidance is not implemented "
                                f"(the paper evaluates with cfg_scale 0, spec §7.2)")
        if str(batch_size).startswith("auto"):
            raise ModelArgError(f"{where}: batch_size={batch_size}: give an integer (no automatic batch size)")
        self.batch_size_per_rank = _positive_int(batch_size, "batch_size", where)
        self.block_size = _positive_int(block_size, "block_size", where)
        self.fixed_max_new_tokens = None if max_new_tokens is None else _positive_int(max_new_tokens, "max_new_tokens", where)
        self.fixed_steps = None if steps is None else _positive_int(steps, "steps", where)
        self.mc_draws = _positive_int(mc_draws, "mc_draws", where)
        self._max_length = _positive_int(max_length, "max_length", where)
        self.temperature = float(temperature)
        if self.temperature < 0:
            raise ModelArgError(f"{where}: temperature must be >= 0, got {temperature}")
        self.seed = int(seed)
        self._rank, self._world_size = self._distributed(data_parallel)
        self._device = self._pick_device(device)
        self._closers: list[Callable[[], None]] = []
        self.pretrained = pretrained
        if denoiser is not None:
            if tokenizer is None or full_forward is None:
                raise ModelArgError(f"{MODEL_NAME}: a denoiser object needs its tokenizer and full_forward too")
            self.denoiser, self.full_forward, self.tokenizer = denoiser, full_forward, tokenizer
            self.vocab_size, self.module = vocab_size, None
        else:
            if not pretrained:
                raise ModelArgError(f"{where}: pretrained=DIR is required (an HF export or a tide-convert directory)")
            self._load(str(pretrained), tokenizer, dtype, kv_cache_slots)
        self.mask_id, self.eos_id, self.pad_id = self._special_ids(mask_id, eos_id, pad_id)
        self.stop_ids = stop_token_ids(self.tokenizer, self.eos_id)

    # ------------------------------------------------------------------------------------------------
    # loading
    # ------------------------------------------------------------------------------------------------

    def _distributed(self, data_parallel: bool) -> tuple[int, int]:
        """(rank, world size): the torch.distributed world when launched with several ranks, else (0, 1)."""
        if not data_parallel:
            return 0, 1
        if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from tide_megatron.distributed import init_distributed  # imports megatron-core: only when launched so

            return init_distributed()
        return 0, 1

    def _pick_device(self, device: Optional[str]) -> torch.device:
        """The requested device; a CUDA request (the harness CLI's default is cuda:0) means this rank's GPU
        under data parallel, and the CPU on a machine without CUDA."""
        if device and not str(device).startswith("cuda"):
            return torch.device(device)
        if not torch.cuda.is_available():
            if device:
                logger.info("%s: device %s asked for but CUDA is not available; running on the CPU", MODEL_NAME, device)
            return torch.device("cpu")
        if self._world_size > 1 or not device:
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device(device)

    def _load(self, pretrained: str, tokenizer: Optional[str], dtype: str, kv_cache_slots: Any) -> None:
        from tide_megatron.models.convert.mcore_dir import is_mcore_dir  # megatron-core: only when loading

        if not os.path.isdir(pretrained):
            raise ModelArgError(f"pretrained={pretrained}: no such directory")
        if is_mcore_dir(pretrained):
            self._load_mcore(pretrained, dtype, kv_cache_slots)
            tokenizer_dir = tokenizer or os.path.join(pretrained, "hf")
        elif os.path.isfile(os.path.join(pretrained, "config.json")):
            self._load_hf(pretrained, dtype)
            tokenizer_dir = tokenizer or pretrained
        else:
            raise ModelArgError(f"pretrained={pretrained}: not a BD3LM student checkpoint (neither an HF export "
                                f"with config.json nor a tide-convert directory with tide_model.json)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        except (OSError, ValueError) as err:
            raise ModelArgError(f"tokenizer={tokenizer_dir}: cannot load a tokenizer there ({err})") from None

    def _load_hf(self, pretrained: str, dtype: str) -> None:
        config = AutoConfig.from_pretrained(pretrained)
        if config.model_type not in STUDENT_MODEL_TYPES:
            raise ModelArgError(f"pretrained={pretrained}: config.json model_type {config.model_type!r} is not a BD3LM "
                                f"student (expected {' or '.join(STUDENT_MODEL_TYPES)}, spec §1.1)")
        torch_dtype = self._torch_dtype(dtype)
        model = load_hf_reference(pretrained).to(device=self._device, dtype=torch_dtype).eval()
        hf = HFDenoiser(model)
        self.denoiser, self.full_forward, self.vocab_size = hf, hf.full_forward, int(config.vocab_size)
        self.module = model

    def _load_mcore(self, pretrained: str, dtype: str, kv_cache_slots: Any) -> None:
        from tide_megatron.models.convert.mcore_dir import META_FILE  # megatron-core: only for its directories

        with open(os.path.join(pretrained, META_FILE), encoding="utf-8") as fh:
            meta = json.load(fh)
        if meta.get("architecture") not in STUDENT_MODEL_TYPES:
            raise ModelArgError(f"pretrained={pretrained}: tide_model.json architecture {meta.get('architecture')!r} "
                                f"is not a BD3LM student (expected {' or '.join(STUDENT_MODEL_TYPES)}, spec §1.1)")
        if self._world_size == 1 and dist.is_initialized() and dist.get_world_size() > 1:
            raise ModelArgError(f"pretrained={pretrained}: data_parallel=False with a megatron directory needs a world "
                                f"of one process (building the student is collective over the world)")
        student = load_mcore_student(pretrained, None if dtype == "auto" else dtype)
        self._closers.append(student.close)
        slots = self._max_length + 2 * self.block_size if kv_cache_slots is None else int(kv_cache_slots)
        self.denoiser = student.denoiser(slots or None)
        self.full_forward, self.module = student.full_forward, student.model
        self.vocab_size = int(getattr(student.model, "vocab_size", 0)) or None

    def _torch_dtype(self, dtype: str) -> torch.dtype:
        choices = {"float32": torch.float32, "bfloat16": torch.bfloat16}
        if dtype == "auto":
            return torch.bfloat16 if self._device.type == "cuda" else torch.float32
        if dtype not in choices:
            raise ModelArgError(f"dtype={dtype}: expected auto, float32 or bfloat16")
        return choices[dtype]

    def _special_ids(self, mask_id: Any, eos_id: Any, pad_id: Any) -> tuple[int, int, int]:
        tok = self.tokenizer
        mask = mask_id if mask_id is not None else getattr(tok, "mask_token_id", None)
        if mask is None:
            mask = tok.get_vocab().get("<|mask|>")
        if mask is None:
            raise ModelArgError(f"tokenizer of {self.pretrained or 'the model'} has no mask token (<|mask|>); "
                                f"pass mask_id=ID in --model_args")
        eos = eos_id if eos_id is not None else getattr(tok, "eos_token_id", None)
        if eos is None:
            raise ModelArgError("the tokenizer has no eos token; pass eos_id=ID in --model_args")
        pad = pad_id if pad_id is not None else getattr(tok, "pad_token_id", None)
        pad = eos if pad is None else pad
        for name, value in (("mask_id", mask), ("eos_id", eos), ("pad_id", pad)):
            if self.vocab_size is not None and not 0 <= int(value) < self.vocab_size:
                raise ModelArgError(f"{name}={value} is outside the model's vocabulary of {self.vocab_size} ids")
        return int(mask), int(eos), int(pad)

    def close(self) -> None:
        """Release what loading opened (the megatron student's process groups; collective)."""
        for close in reversed(self._closers):
            close()
        self._closers = []

    # ------------------------------------------------------------------------------------------------
    # the harness's model interface
    # ------------------------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self.fixed_max_new_tokens or DEFAULT_MAX_NEW_TOKENS

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_rank

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "tokenizer")).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs) -> list[int]:
        return self.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"]

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True)

    def chat_template(self, chat_template: bool | str = False) -> Optional[str]:
        return chat_template_of(self.tokenizer) if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The student's chat format with the empty think block; a trailing assistant turn is a prefill."""
        return render_chat(self.tokenizer, chat_history, add_generation_prompt)

    def get_model_info(self) -> dict:
        return {"model_class": MODEL_NAME, "pretrained": self.pretrained, "denoiser": type(self.denoiser).__name__,
                "block_size": self.block_size, "mc_draws": self.mc_draws, "seed": self.seed,
                "world_size": self.world_size}

    # distributed primitives the evaluator uses (instance counts, gathering per-sample results on rank 0)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        flat = tensor.reshape(1) if tensor.dim() == 0 else tensor
        parts = [torch.empty_like(flat) for _ in range(self.world_size)]
        dist.all_gather(parts, flat)
        return torch.cat(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> Optional[list]:
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    # ------------------------------------------------------------------------------------------------
    # generation
    # ------------------------------------------------------------------------------------------------

    def _settings(self, gen_kwargs: Any, task: Optional[str]) -> GenerationSettings:
        where = f"task {task}" if task else "generate_until"
        if not isinstance(gen_kwargs, dict):
            raise ModelArgError(f"{where}: generation kwargs must be a dict, got {type(gen_kwargs).__name__}")
        kw = dict(gen_kwargs)
        until = kw.get("until") or []
        until = (until,) if isinstance(until, str) else tuple(until)
        if self.fixed_max_new_tokens is not None:
            length = self.fixed_max_new_tokens
        else:
            length = _positive_int(kw.get("max_gen_toks", DEFAULT_MAX_NEW_TOKENS), "max_gen_toks", where)
        if self.fixed_steps is not None:
            steps = self.fixed_steps
        else:
            steps = _positive_int(kw.get("steps", length), "steps", where)
        temperature = self.temperature
        if kw.get("do_sample") and "temperature" in kw:
            temperature = float(kw["temperature"])
        if temperature < 0:
            raise ModelArgError(f"{where}: temperature must be >= 0, got {temperature}")
        return GenerationSettings(length, steps, temperature, until)

    def _sampler_config(self, s: GenerationSettings) -> SamplerConfig:
        return SamplerConfig(mask_id=self.mask_id, pad_id=self.pad_id, eos_id=self.eos_id, block_size=self.block_size,
                             max_new_tokens=s.max_new_tokens, steps=s.steps, temperature=s.temperature,
                             stop_ids=self.stop_ids)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Block-sampler completions, think spans stripped and cut at each request's stop strings."""
        settings = [self._settings(req.args[1], req.task_name) for req in requests]
        prompts = [self.tok_encode(req.args[0]) for req in requests]
        for req, ids in zip(requests, prompts):
            if not ids:
                raise ModelArgError(f"task {req.task_name}: an empty prompt (doc {req.doc_id})")
        groups: dict[GenerationSettings, list[int]] = {}
        for i, s in enumerate(settings):
            groups.setdefault(s, []).append(i)
        out: list[Optional[str]] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="generate_until (BD3LM)")
        for s, members in groups.items():
            cfg = self._sampler_config(s)
            keep = max(1, self.max_length - s.max_new_tokens)
            members = sorted(members, key=lambda i: (-len(prompts[i]), i))  # similar lengths share a batch
            for start in range(0, len(members), self.batch_size):
                batch = members[start:start + self.batch_size]
                generator = None
                if s.temperature > 0:
                    generator = torch.Generator().manual_seed(_request_seed(self.seed, [prompts[i] for i in batch]))
                result = bd3lm_generate(self.denoiser, [prompts[i][-keep:] for i in batch], cfg, generator)
                for i, ids in zip(batch, result.completions):
                    text = cut_at_stops(decode_completion(self.tokenizer, ids), s.until)
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(batch))
        bar.close()
        return [text or "" for text in out]

    # ------------------------------------------------------------------------------------------------
    # likelihood bound
    # ------------------------------------------------------------------------------------------------

    def _bound(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(-NELBO, greedy) per (context ids, continuation ids); batches of similar length."""
        seqs, starts = [], []
        for ctx, cont in pairs:
            if not cont:
                raise ModelArgError("loglikelihood: an empty continuation has nothing to score")
            seq = (list(ctx) + list(cont))[-self.max_length:]
            seqs.append(seq)
            starts.append(max(0, len(seq) - len(cont)))
        order = sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i))
        out: list[Optional[tuple[float, bool]]] = [None] * len(seqs)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            b_seqs, b_starts = [seqs[i] for i in batch], [starts[i] for i in batch]
            gens = [torch.Generator().manual_seed(_request_seed(self.seed, s, k)) for s, k in zip(b_seqs, b_starts)]
            nelbo = conditional_nelbo(self.full_forward, b_seqs, b_starts, self.mask_id, self.block_size,
                                      self.mc_draws, gens)
            greedy = greedy_matches(self.full_forward, b_seqs, b_starts, self.mask_id, self.block_size)
            for i, value, g in zip(batch, nelbo, greedy):
                out[i] = (-value, g)
        return out  # type: ignore[return-value]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """A lower bound on log p(continuation | context), not the exact log-likelihood.

        The value is minus the BD3LM negative ELBO of the continuation given the clean context
        (``eval/nll.conditional_nelbo``), a Monte Carlo estimate over ``mc_draws`` masking rates with a
        seed fixed per request (deterministic, and the same on any rank or batch). ``is_greedy`` says
        whether every continuation token is the argmax when the whole continuation is masked.
        """
        results = self._bound([(ctx, cont) for _, ctx, cont in requests])
        for (key, _, _), res in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Bound on each document's log-likelihood: the sum over its disjoint ``max_length`` windows
        (the harness's rolling windows, one prefix token of context) of the conditional bound."""
        results = []
        for req in tqdm(requests, disable=disable_tqdm or self.rank != 0, desc="loglikelihood_rolling (BD3LM)"):
            (string,) = req.args
            windows = list(map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1)))
            total = sum(ll for ll, _ in self._bound(windows)) if windows else 0.0
            results.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        return results

