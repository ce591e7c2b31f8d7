"""Warning filters for our command lines: third-party warnings we understand and cannot act on, each with its reason.

Each filter names the message and the module that issues it, so our own warnings, and anything new a
dependency starts to say, still show. `tide_megatron/cli/__init__.py` installs them, so every entry point
(tide-train, tide-demo, tide-eval, tide-preprocess, tide-convert, tide-report, tide-ablate, also under
torchrun) starts quiet; ``TIDE_SHOW_ALL_WARNINGS=1`` turns them off.
"""

from __future__ import annotations

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
)


def quiet_third_party_warnings() -> None:
    """Install the filters above (idempotent), and hide transformers' progress bar for one-shard saves."""
    if os.environ.get("TIDE_SHOW_ALL_WARNINGS") == "1":
        return
    for message, category, module, _reason in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    # transformers draws a progress bar for writing a single small shard; the demo's phase lines say enough
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
