"""Warning filters for our command lines: third-party warnings we understand and cannot act on, each with its reason.

Each filter names the message and the module (or logger) that issues it, so our own warnings, and anything
new a dependency starts to say, still show. `tide_megatron/cli/__init__.py` installs them, so every entry point
(tide-train, tide-demo, tide-eval, tide-preprocess, tide-convert, tide-report, tide-ablate, also under
torchrun) starts quiet; ``TIDE_SHOW_ALL_WARNINGS=1`` turns them off.
"""

from __future__ import annotations

import logging
import os
import warnings

#: (message regex, category, issuing module regex, why we do not act on it)
THIRD_PARTY_WARNINGS: tuple[tuple[str, type[Warning], str, str], ...] = (
    (r"Transformer Engine and Apex are not installed", UserWarning, r"megatron\.",
     "megatron-core announces its torch fallbacks at import; on CPU they are the intended path, on GPU the "
     "backend provider chooses Transformer Engine itself"),
    (r"Apex is not installed", UserWarning, r"megatron\.",
     "apex is optional (README); megatron-core's torch norm fallback is what the local layer spec uses"),
    (r"full scope is deprecated", UserWarning, r"megatron\.core\.transformer\.transformer_config",
     "megatron-core's own default cuda_graph_scope trips its own deprecation; we capture no CUDA graphs"),
    (r"The \.grad attribute of a Tensor that is not a leaf Tensor", UserWarning, r"megatron\.core\.optimizer",
     "megatron-core's optimizer probes .grad on its main-grad views; nothing reads the value"),
    (r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated", FutureWarning,
     r"torch\.distributed", "called by megatron-core's DDP and distributed optimizer, not by our code"),
    (r"`load_state_dict` is deprecated", FutureWarning, r"megatron\.core\.dist_checkpointing",
     "megatron-core's checkpoint loader calls torch's old name"),
    (r"Please use DTensor instead and we are deprecating ShardedTensor", FutureWarning, r"torch\.distributed\.",
     "megatron-core's dist_checkpointing still saves and loads through ShardedTensor"),
    (r"tp_group is None, using default tp group", DeprecationWarning, r"megatron\.",
     "megatron-core's own layers call it without a group; our grids pass process groups explicitly"),
    (r"The following imports from `dynamic_context\.py` will be removed", DeprecationWarning, r"megatron\.",
     "an import inside megatron-core's inference package, not ours"),
    (r"`rope_scaling` is deprecated", FutureWarning, r"transformers\.configuration_utils",
     "released LLaDA2 config.json files carry rope_scaling; transformers 5 objects whenever it reads one "
     "(AutoTokenizer reads the config.json beside a tokenizer)"),
)

#: (logger, message substring, why): transformers' log lines of the same kind (logging, not warnings).
THIRD_PARTY_LOG_LINES: tuple[tuple[str, str, str], ...] = (
    ("transformers.configuration_utils", "to instantiate a model of type ``",
     "AutoTokenizer reads the config.json beside a tokenizer and says it does not know LLaDA2's model type; "
     "only the tokenizer is loaded from it"),
)


class _DropLines(logging.Filter):
    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle = needle

    def filter(self, record: logging.LogRecord) -> bool:
        return self.needle not in record.getMessage()


def quiet_third_party_warnings() -> None:
    """Install the filters above (idempotent), and hide transformers' progress bar for one-shard saves."""
    if os.environ.get("TIDE_SHOW_ALL_WARNINGS") == "1":
        return
    for message, category, module, _reason in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, needle, _reason in THIRD_PARTY_LOG_LINES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) and f.needle == needle for f in logger.filters):
            logger.addFilter(_DropLines(needle))
    # transformers draws a progress bar for writing a single small shard; the demo's phase lines say enough
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
