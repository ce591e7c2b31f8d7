"""tide-teacher-cache through its command line (one process, a world of one): it writes the cache next to the
dataset, and an offline run reading it trains with the online run's losses; an existing cache, a token mode and
a cache read by other settings are clear errors."""

import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file

from tests.helpers import tiny_distill as td
from tide_megatron.cli import teacher_cache
from tide_megatron.config import load_config
from tide_megatron.data.indexed import TideAlignedDataset
from tide_megatron.teacher.cache import CacheError
from tide_megatron.training.teacher_server import build_trainer


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache_cli")
    td.write_student(root / "student")
    td.write_moe_teacher(root / "moe")
    td.write_dense_teacher(root / "dense")
    td.write_dataset(root / "data", 16, "A")
    td.write_dataset(root / "data_b", 8, "B")
    cfg = {"preset": "a_tide_cross", "output_dir": str(root / "out"),
           "student": {"checkpoint": str(root / "student"), "seq_length": 48, "block_size": 16},
           "teacher": {"checkpoint": str(root / "moe"), "dtype": "fp32"},
           "data": {"train": str(root / "data"), "micro_batch_size": 2, "num_workers": 0},
           "optim": {"train_steps": 3, "lr": 1e-3},
           "objective": {"shared_vocab": td.STUDENT_VOCAB - 8},
           "precision": {"dtype": "fp32"},
           "checkpoint": {"resume": "none", "save_interval": 1000, "save_at_end": False},
           "logging": {"log_interval": 1, "tensorboard": False}}
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    return root


def _losses(trainer) -> list[float]:
    return [v for _, v in trainer.logger.history["loss/total"]]


def test_the_command_writes_a_cache_an_offline_run_reads_with_the_online_losses(setup, capsys):
    assert teacher_cache.main(["--config", str(setup / "run.yaml"), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 epoch(s) of 16 training samples, one fp32 per teacher token" in out and "MiB" in out
    cache = setup / "data.teacher-cache"
    assert (cache / "meta.json").is_file() and (cache / "train" / "epoch_0000.bin").is_file()
    assert not [p for p in setup.iterdir() if p.name.startswith(".data.teacher-cache")]

    data = TideAlignedDataset(setup / "data")
    online = build_trainer(load_config(str(setup / "run.yaml")), data)
    online.run()
    online.close()
    offline = build_trainer(load_config(str(setup / "run.yaml"), ["teacher.placement=offline",
                                                                  f"output_dir={setup / 'offline'}"]), data)
    assert offline.teacher is None
    offline.run()
    offline.close()
    assert len(_losses(offline)) == 3
    assert _losses(offline) == pytest.approx(_losses(online), rel=1e-5, abs=1e-7)

    # Reading past the cached epochs, or with another seed, is refused before any model is built.
    with pytest.raises(CacheError, match=r"reads 2 epochs of train .*epoch_0001\.bin is missing"):
        build_trainer(load_config(str(setup / "run.yaml"), ["teacher.placement=offline", "optim.train_steps=9"]), data)
    with pytest.raises(CacheError, match=r"optim\.seed = 42, this run has 7"):
        build_trainer(load_config(str(setup / "run.yaml"), ["teacher.placement=offline", "optim.seed=7"]), data)
    # Another dataset, or a teacher whose weights changed under the same config.json, is another run.
    other = td.write_dataset(setup / "other_data", 16, "A", seed=5)
    with pytest.raises(CacheError, match=r"data\.train = '[0-9a-f]{64}', this run has '[0-9a-f]{64}'"):
        build_trainer(load_config(str(setup / "run.yaml"), ["teacher.placement=offline",
                                                            f"teacher.cache={cache}"]), other)
    shutil.copytree(setup / "moe", setup / "moe_changed")
    weights = next((setup / "moe_changed").glob("*.safetensors"))
    state = load_file(str(weights))
    name = sorted(state)[0]
    state[name] = state[name] + 1e-3
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(CacheError, match=r"teacher\.checkpoint = '[0-9a-f]{64}', this run has"):
        build_trainer(load_config(str(setup / "run.yaml"), ["teacher.placement=offline",
                                                            f"teacher.checkpoint={setup / 'moe_changed'}"]), data)


def test_the_command_refuses_an_existing_cache_and_a_token_mode(setup, capsys):
    (setup / "data.teacher-cache").mkdir(exist_ok=True)
    assert teacher_cache.main(["--config", str(setup / "run.yaml")]) == 2
    err = capsys.readouterr().err
    assert "teacher.cache: " in err and "exists; remove it or pass --overwrite" in err
    assert teacher_cache.main(["--config", str(setup / "run.yaml"), "preset=b_tide_cross", "teacher.arch=wedlm",
                               f"teacher.checkpoint={setup / 'dense'}", f"data.train={setup / 'data_b'}"]) == 2
    err = capsys.readouterr().err
    assert ("teacher.placement: offline payloads are one fp32 per teacher token (the chunk modes: alm, reverse_alm, "
            "alm_taid, reverse_alm_taid); objective.mode='reverse_kl_aligned' distils full-vocabulary logit rows "
            "(120 fp32") in err
    assert not (setup / "data_b.teacher-cache").exists()
