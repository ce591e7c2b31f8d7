"""The one safetensors reader both converters use: index / single file / bare directory of shards, sliced
reads equal to slicing the full tensor, and one clear error per bad checkpoint."""

import json

import pytest
import torch
from safetensors.torch import save_file

from tide_megatron.models.safetensors_reader import CheckpointError, SafetensorsReader


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(6, 4, generator=g), "b.weight": torch.randn(3, 5, generator=g),
            "c.bias": torch.randn(7, generator=g)}


def _write_indexed(path, tensors):
    save_file({"a.weight": tensors["a.weight"]}, str(path / "model-00001-of-00002.safetensors"))
    save_file({k: tensors[k] for k in ("b.weight", "c.bias")}, str(path / "model-00002-of-00002.safetensors"))
    weight_map = {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors",
                  "c.bias": "model-00002-of-00002.safetensors"}
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize("layout", ["index", "single", "bare_shards"])
def test_every_layout_reads_the_same_tensors(tmp_path, layout):
    tensors = _tensors()
    if layout == "index":
        _write_indexed(tmp_path, tensors)
    elif layout == "single":
        save_file(tensors, str(tmp_path / "model.safetensors"))
    else:
        save_file({"a.weight": tensors["a.weight"]}, str(tmp_path / "part-a.safetensors"))
        save_file({k: tensors[k] for k in ("b.weight", "c.bias")}, str(tmp_path / "part-b.safetensors"))
    reader = SafetensorsReader(tmp_path)
    assert sorted(reader.keys()) == sorted(tensors) and "c.bias" in reader and "nope" not in reader
    for key, ref in tensors.items():
        assert reader.shape(key) == tuple(ref.shape)
        assert torch.equal(reader.get(key), ref)
    full = tensors["a.weight"]
    assert torch.equal(reader.read("a.weight", "test", rows=slice(2, 5)), full[2:5])
    assert torch.equal(reader.read("a.weight", "test", cols=slice(1, 3)), full[:, 1:3])
    assert torch.equal(reader.read("a.weight", "test", rows=slice(0, 2), cols=slice(3, 4), expect_shape=(6, 4)),
                      full[0:2, 3:4])
    reader.close()


def test_errors_name_file_tensor_and_purpose(tmp_path):
    _write_indexed(tmp_path, _tensors())
    reader = SafetensorsReader(tmp_path)
    with pytest.raises(CheckpointError, match=r"tensor 'z\.weight' is missing \(needed for the router\)"):
        reader.read("z.weight", "the router")
    with pytest.raises(CheckpointError, match=r"model-00001-of-00002\.safetensors: tensor 'a\.weight' has shape "
                                              r"\(6, 4\), expected \(4, 6\) \(for embedding\)"):
        reader.read("a.weight", "embedding", expect_shape=(4, 6))


def test_missing_shard_fails_at_open_time(tmp_path):
    _write_indexed(tmp_path, _tensors())
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="lists shard.* that do not exist: model-00002-of-00002"):
        SafetensorsReader(tmp_path)
    with pytest.raises(CheckpointError, match="do not exist"):
        SafetensorsReader(tmp_path)


def test_bad_directories(tmp_path):
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors files and no model\.safetensors\.index\.json"):
        SafetensorsReader(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match="no 'weight_map' object"):
        SafetensorsReader(tmp_path)
    (tmp_path / "model.safetensors.index.json").unlink()
    save_file({"x": torch.zeros(2)}, str(tmp_path / "one.safetensors"))
    save_file({"x": torch.ones(2)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(CheckpointError, match="tensor 'x' is in both one.safetensors and two.safetensors"):
        SafetensorsReader(tmp_path)
