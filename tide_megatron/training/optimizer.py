"""Student optimisation on megatron-core: DDP + distributed optimizer (fp32 master weights), AdamW, clipping,
cosine LR with linear warmup (spec §7.1; §9.23 for the fp32-master deviation).

Everything is built over the *student* grid's `ProcessGroupCollection`, so the teacher's groups are never
touched. Notes for CPU (gloo) and for TE-less installs (MEGATRON_ON_CPU §4): megatron's gloo side groups are
not supported with an explicit `pg_collection`, so they are disabled; `prepare_optimizer_for_loading` works
around the DistOpt + torch-AdamW `state_dict` assertion, and loading must run under `torch.no_grad()`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed.finalize_model_grads import finalize_model_grads
from megatron.core.distributed.param_and_grad_buffer import _ParamAndGradBucketGroup
from megatron.core.optimizer import MegatronOptimizer, OptimizerConfig, clip_grads, get_megatron_optimizer
from megatron.core.optimizer import optimizer as megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.utils import local_multi_tensor_scale

from tide_megatron.config import OptimConfig


def _complete_student_groups(pgs: ProcessGroupCollection) -> ProcessGroupCollection:
    """One distributed-optimizer instance spans the whole student grid (tp x dp): megatron asks for it by name."""
    if not hasattr(pgs, "intra_dist_opt"):
        pgs.intra_dist_opt = pgs.tp_dp_cp
    return pgs


def wrap_ddp(module: torch.nn.Module, pgs: ProcessGroupCollection, grad_reduce_in_fp32: bool = True,
             bucket_size: Optional[int] = None) -> DistributedDataParallel:
    """megatron-core DDP over the student's data-parallel group, laid out for the distributed optimizer.

    Gradients are averaged across data-parallel ranks; each rank's loss is normalised locally (spec §9.9).
    """
    _complete_student_groups(pgs)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=grad_reduce_in_fp32,
        overlap_grad_reduce=False,
        use_distributed_optimizer=True,
        bucket_size=bucket_size,
        average_in_collective=False,
    )
    ddp = DistributedDataParallel(module.config, ddp_config, module, pg_collection=pgs)
    skip_one_rank_param_gather(ddp)
    return ddp


class _OneRankBucketGroup(_ParamAndGradBucketGroup):
    """A bucket group whose distributed-optimizer shard is its whole buffer: the parameter all-gather is a no-op."""

    def start_param_sync(self, force_sync: bool = False) -> None:
        """Mark the parameters gathered: at one rank the updated shard already is the parameter buffer."""
        self.param_gather_handle = None
        self.param_gather_dispatched = True


def skip_one_rank_param_gather(model: DistributedDataParallel) -> None:
    """Skip the parameter all-gather after each optimizer step in bucket groups of one-rank shard groups.

    megatron has no one-rank shortcut there; gloo's one-rank `all_gather_into_tensor` copies the whole parameter
    buffer onto itself (tens of ms a step for the benchmark's 7 M parameters on CPU). Groups of two or more ranks
    keep megatron's all-gather.
    """
    for group in _bucket_groups(model):
        if type(group) is _ParamAndGradBucketGroup and _one_rank_shard(group):
            group.__class__ = _OneRankBucketGroup


def build_optimizer(model: DistributedDataParallel, cfg: OptimConfig, pgs: ProcessGroupCollection,
                    bf16: bool) -> MegatronOptimizer:
    """AdamW (decoupled weight decay) through `get_megatron_optimizer` with the distributed optimizer.

    With bf16 parameters the optimizer keeps fp32 master weights and fp32 Adam moments.
    """
    _complete_student_groups(pgs)
    opt_config = OptimizerConfig(
        optimizer="adam",
        lr=cfg.lr,
        min_lr=cfg.min_lr,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        adam_eps=cfg.adam_eps,
        clip_grad=cfg.clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=True,
        decoupled_weight_decay=True,
    )
    optimizer = get_megatron_optimizer(opt_config, [model], use_gloo_process_groups=False, pg_collection=pgs)
    use_fused_torch_adamw(optimizer)
    scale_tensors_in_place()
    return optimizer


def use_fused_torch_adamw(optimizer: MegatronOptimizer) -> None:
    """Run torch's fused AdamW kernel where megatron fell back to torch's AdamW (no TE / apex installed).

    megatron builds it with torch's defaults, which on CPU are the per-parameter for-loop (several elementwise
    passes per tensor); the fused kernel applies the same update in one pass over each tensor (2x faster
    here). TE's and apex's FusedAdam are left as they are.
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if type(inner) not in (torch.optim.AdamW, torch.optim.Adam):
            continue
        for group in (inner.defaults, *inner.param_groups):
            group["foreach"], group["fused"] = False, True


def _scale_into(chunk_size: int, noop_flag: torch.Tensor, tensor_lists: list, scale: float) -> None:
    """megatron's `local_multi_tensor_scale` (``dst = src * scale``) written straight into ``dst``."""
    for src, dst in zip(tensor_lists[0], tensor_lists[1]):
        torch.mul(src, scale, out=dst)


def scale_tensors_in_place() -> None:
    """Where megatron fell back to its local `multi_tensor_scale` (no TE / apex), write each product in place.

    The fallback computes ``dst.copy_(src * scale)``: a fresh temporary per tensor, so gradient clipping touches
    the whole gradient buffer twice and page-faults a new copy of each tensor every clipped step. TE's and apex's
    kernels are left as they are.
    """
    for module in (clip_grads, megatron_optimizer):
        if module.multi_tensor_scale_impl is local_multi_tensor_scale:
            module.multi_tensor_scale_impl = _scale_into


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """HF Trainer's rule: ceil(warmup_ratio x total optimizer steps)."""
    return int(math.ceil(warmup_ratio * total_steps))


def build_lr_scheduler(optimizer: MegatronOptimizer, cfg: OptimConfig, total_steps: int) -> OptimizerParamScheduler:
    """megatron's `OptimizerParamScheduler`: linear warmup from 0, then cosine (or linear) decay to ``min_lr``."""
    warm = warmup_steps(total_steps, cfg.warmup_ratio)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=cfg.lr,
        min_lr=cfg.min_lr,
        lr_warmup_steps=warm,
        lr_decay_steps=max(total_steps, warm + 1),
        lr_decay_style=cfg.lr_schedule,
        start_wd=cfg.weight_decay,
        end_wd=cfg.weight_decay,
        wd_incr_steps=max(total_steps, 1),
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
    )


def reduce_gradients(model: DistributedDataParallel, pgs: ProcessGroupCollection) -> None:
    """Finish the data-parallel gradient reduction (and TP-shared parameter grads) after the last micro-batch.

    Where every distributed-optimizer shard group has one rank, the reduce-scatter and an all-reduce both leave
    the buffer as it is; megatron is asked for the all-reduce, which gloo does in place, where its one-rank
    reduce-scatter copies the whole gradient buffer through a fresh temporary (tens of ms a step on CPU).
    """
    finalize_model_grads([model], pg_collection=pgs, force_all_reduce=one_rank_optimizer_shards(model))


def one_rank_optimizer_shards(model: DistributedDataParallel) -> bool:
    """True when every bucket group's distributed-optimizer shard group is one rank (the shard is the buffer)."""
    return all(_one_rank_shard(g) for g in _bucket_groups(model))


def _bucket_groups(model: DistributedDataParallel) -> list:
    return model.bucket_groups + model.expert_parallel_bucket_groups


def _one_rank_shard(group) -> bool:
    """The bucket group's distributed-optimizer shard group has one rank (False without a distributed optimizer)."""
    return getattr(group, "intra_distributed_optimizer_instance_size", 0) == 1


def prepare_optimizer_for_loading(optimizer: MegatronOptimizer) -> None:
    """Give a fresh distributed optimizer its Adam state tensors so its sharded state dict can be built.

    Without Transformer Engine the torch AdamW holds no ``step``/moments before its first step, and the
    DistOpt state_dict asserts on that (MEGATRON_ON_CPU §4).
    """
    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    for opt in chained:
        init = getattr(opt, "_init_optimizer_states_with_dummy_values", None)
        if init is not None and not opt.optimizer.state:
            init()


def restore_adam_step_counts(optimizer: MegatronOptimizer) -> None:
    """After loading, copy the saved Adam step count into torch AdamW's per-parameter ``step`` state.

    Without Transformer Engine the distributed optimizer saves the step in its param groups, but its
    parameter-state loading leaves the dummy per-parameter step of `prepare_optimizer_for_loading` in
    place; torch AdamW's bias correction reads the latter, so resumed runs would drift without this.
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            continue
        for group in inner.param_groups:
            if "step" not in group:
                continue
            for param in group["params"]:
                state = inner.state.get(param)
                if state is not None and "step" in state:
                    state["step"] = torch.tensor(float(group["step"]), dtype=state["step"].dtype,
                                                 device=state["step"].device)
