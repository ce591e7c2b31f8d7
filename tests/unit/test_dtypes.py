"""One dtype table for configs and command lines (tide_megatron/dtypes.py)."""

import pytest
import torch

from tide_megatron.dtypes import DTYPES, torch_dtype


def test_config_and_torch_names_map_to_one_dtype_each():
    assert torch_dtype("bf16") is torch_dtype("bfloat16") is torch.bfloat16
    assert torch_dtype("fp32") is torch_dtype("float32") is torch.float32
    assert set(DTYPES.values()) == {torch.float32, torch.bfloat16, torch.float16}
    with pytest.raises(ValueError, match="precision.dtype: expected one of .*bf16.*got 'int8'"):
        torch_dtype("int8", "precision.dtype")
