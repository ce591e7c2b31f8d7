"""Layout arithmetic and the CPU compatibility layer, single process."""

import pytest
import torch

from tide_megatron.distributed import ParallelLayout, cpu_compat


def test_data_parallel_size_divides_world():
    assert ParallelLayout(tp=2, pp=2).data_parallel_size(8) == 2
    assert ParallelLayout(ep=4).data_parallel_size(8) == 8


@pytest.mark.parametrize("layout,flag", [(ParallelLayout(tp=3), "tp\\*pp"), (ParallelLayout(ep=3), "etp\\*ep\\*pp"),
                                         (ParallelLayout(tp=0), "teacher.tp")])
def test_layout_that_does_not_divide_names_the_flag(layout, flag):
    with pytest.raises(ValueError, match=flag):
        layout.data_parallel_size(8, "teacher")


def test_compat_redirects_cuda_factories_and_rng():
    assert cpu_compat.is_applied()
    x = torch.zeros(3, device="cuda")
    assert x.device.type == "cpu"
    assert torch.ones(2, device=torch.cuda.current_device()).device.type == "cpu"
    assert x.type() == "torch.cuda.FloatTensor"
    assert x.type(torch.float64).dtype == torch.float64
    torch.cuda.manual_seed(7)
    a = torch.rand(4)
    torch.manual_seed(7)
    assert torch.equal(a, torch.rand(4))
