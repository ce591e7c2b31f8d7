"""Config loading, overrides, presets and bad-input errors (issue 6: config, bad input; issue 10: OmegaConf)."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from tide_megatron.config import (PRESETS, ConfigError, config_from_dict, dump_config, load_config, parse_overrides,
                                  paths_unchecked)
from tide_megatron.losses import MODES, ObjectiveConfig, build_objective

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.fixture
def files(tmp_path):
    """A minimal set of existing paths a config can point at."""
    for d in ("student", "teacher"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "config.json").write_text("{}")
    (tmp_path / "student" / "tokenizer.json").write_text('{"vocab": "student"}')
    (tmp_path / "teacher" / "tokenizer.json").write_text('{"vocab": "teacher"}')
    (tmp_path / "train").mkdir()
    return tmp_path


def _raw(files, **sections):
    raw = {"output_dir": str(files / "out"),
           "student": {"checkpoint": str(files / "student")},
           "teacher": {"checkpoint": str(files / "teacher")},
           "data": {"train": str(files / "train")}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_full_scale_examples_match_their_presets(name):
    """Each examples/pipeline_*.yaml loads, and its objective is exactly the preset's (spec §6)."""
    path = EXAMPLES / f"pipeline_{name}.yaml"
    with paths_unchecked():
        cfg = load_config(str(path))
        preset_only = config_from_dict({"preset": name})
    assert cfg.objective == preset_only.objective
    assert cfg.optim.lr == 5e-5 and cfg.optim.warmup_ratio == 0.1 and cfg.optim.clip_grad == 1.0
    assert cfg.student.seq_length == 512 and cfg.student.block_size == 32
    assert cfg.optim.epochs == (2.0 if name.startswith("a_") else 3.0)
    assert cfg.teacher.arch == ("llada2" if name.startswith("a_") else "wedlm")
    assert cfg.check_world_size(8)[1] == 8


def test_presets_follow_the_mode_catalogue():
    with paths_unchecked():
        modes = {n: (config_from_dict({"preset": n}).objective.mode, config_from_dict({"preset": n}).objective.compdemo)
                 for n in PRESETS}
        shared_b = config_from_dict({"preset": "b_tide_shared"}).objective
    assert modes == {"a_calm": ("alm", False), "a_tide_cross": ("reverse_alm", False),
                     "a_tide_shared": ("alm_taid", True), "b_kl": ("kl_aligned", False),
                     "b_tide_cross": ("reverse_kl_aligned", False), "b_tide_shared": ("taid_aligned", True)}
    assert shared_b.timestep_weight == "midrange" and shared_b.kl_temperature == 2.0


def test_overrides_are_coerced_to_field_types(files):
    cfg_path = files / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(_raw(files, preset="a_tide_cross")))
    cfg = load_config(str(cfg_path), ["optim.lr=1e-4", "optim.train_steps=7", "objective.compdemo=true",
                                      "teacher.mask_id=none", "optim.epochs=3", "name=x"])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.train_steps == 7 and cfg.objective.compdemo is True
    assert cfg.teacher.mask_id is None and cfg.optim.epochs == 3.0 and cfg.name == "x"
    assert cfg.checkpoint.dir == str(files / "out" / "checkpoints")


@pytest.mark.parametrize("override,match", [
    ("optim.lr=abc", "optim.lr: expected a number"),
    ("optim.train_steps=1.5", "optim.train_steps: expected an integer"),
    ("objective.compdemo=maybe", "objective.compdemo: expected a boolean"),
    ("optim.bogus=1", "optim.bogus: unknown field"),
    ("nosuch.lr=1", "unknown section 'nosuch'"),
    ("optim.lr", "expected KEY=VALUE"),
    ("objective.mode=nonsense", "objective.mode: expected one of"),
    ("student.seq_length=500", "student.seq_length: 500 is not a multiple of student.block_size"),
    ("objective.mode=alm+kl_aligned", "ALM modes cannot be composed"),
])
def test_bad_overrides_name_the_field(files, override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override] + [f"student.checkpoint={files / 'student'}", f"teacher.checkpoint={files / 'teacher'}",
                       f"data.train={files / 'train'}"])


def test_missing_files_are_named(files):
    with pytest.raises(ConfigError, match="teacher.checkpoint: .*does not exist"):
        config_from_dict(_raw(files, teacher={"checkpoint": str(files / "nope")}))
    with pytest.raises(ConfigError, match="data.train: no dataset"):
        config_from_dict(_raw(files, data={"train": str(files / "missing")}))
    with pytest.raises(ConfigError, match="--config: file"):
        load_config(str(files / "absent.yaml"))


def test_token_level_mode_with_different_tokenizers_is_refused(files):
    with pytest.raises(ConfigError, match="llada2 teacher has a different tokenizer"):
        config_from_dict(_raw(files, preset="a_tide_cross", objective={"mode": "taid_aligned"}))
    with pytest.raises(ConfigError, match="student.tokenizer .* and teacher.tokenizer .* differ"):
        config_from_dict(_raw(files, preset="b_tide_shared"))
    # Same tokenizer content under two paths: accepted.
    (files / "teacher" / "tokenizer.json").write_text('{"vocab": "student"}')
    assert config_from_dict(_raw(files, preset="b_tide_shared")).objective.mode == "taid_aligned"


def _write_meta(files, **config):
    meta = {"config": {"align": "chunks", "student_max_len": 512, "student_tokenizer": str(files / "student"),
                       "teacher_tokenizer": str(files / "teacher"), **config}}
    (files / "train" / "meta.json").write_text(json.dumps(meta))


def test_dataset_written_by_another_tokenizer_is_refused(files):
    (files / "other").mkdir()
    (files / "other" / "tokenizer.json").write_text('{"vocab": "other"}')
    _write_meta(files)
    assert config_from_dict(_raw(files, preset="a_tide_cross")).data.train == str(files / "train")
    _write_meta(files, student_tokenizer=str(files / "other"))
    with pytest.raises(ConfigError, match="student.tokenizer: .* is not the tokenizer that wrote data.train"):
        config_from_dict(_raw(files, preset="a_tide_cross"))


def test_dataset_alignment_and_length_must_fit_the_mode(files):
    _write_meta(files, align="chunks")
    with pytest.raises(ConfigError, match="objective.mode: 'kl_aligned' needs a dataset aligned by pairs"):
        config_from_dict(_raw(files, preset="b_kl", teacher={"checkpoint": str(files / "student")}))
    _write_meta(files, student_max_len=256)
    with pytest.raises(ConfigError, match="student.seq_length: 512 differs from the dataset's student_max_len 256"):
        config_from_dict(_raw(files, preset="a_tide_cross"))


def test_layout_that_does_not_divide_the_world_is_named(files):
    cfg = config_from_dict(_raw(files, preset="a_tide_cross", teacher={"ep": 4}))
    assert cfg.check_world_size(8) == (8, 8)
    with pytest.raises(ConfigError, match="teacher: etp\\*ep\\*pp"):
        cfg.check_world_size(2)
    with pytest.raises(ConfigError, match="teacher.ep: the dense WeDLM teacher has no experts"):
        config_from_dict(_raw(files, preset="b_kl", teacher={"ep": 2}))


def test_parse_overrides_nests():
    assert parse_overrides(["optim.lr=1", "optim.x=a", "name=y"]) == {"optim": {"lr": 1, "x": "a"}, "name": "y"}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_tiny_cpu_examples_keep_the_paper_objective(name):
    """examples/tiny/ changes sizes, never the objective (only the shared-vocab cut of the tiny tokenizer)."""
    with paths_unchecked():
        tiny = load_config(str(EXAMPLES / "tiny" / f"tiny_pipeline_{name}.yaml"))
        full = load_config(str(EXAMPLES / f"pipeline_{name}.yaml"))
    assert dataclasses.replace(tiny.objective, shared_vocab=full.objective.shared_vocab) == full.objective
    assert tiny.check_world_size(2) == (1 if name.startswith("b_") else 2, 2)
    assert tiny.precision.fp8 is False and tiny.precision.dtype == "fp32"


@pytest.mark.parametrize("key,match", [
    ("objective.distill_weight=1.0", "objective.distill_weight: replaced by objective.kl_weight"),
    ("teacher.max_length=1024", "teacher.max_length: removed .*--teacher-max-len"),
    ("student.mask_id=5", "student.mask_id: removed .*meta.json"),
])
def test_retired_fields_say_what_to_write_instead(files, key, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(_raw(files, preset="a_tide_cross", **parse_overrides([key])))


def test_objective_section_is_the_losses_objective_config_with_the_modes_recipe(files):
    """One ObjectiveConfig (losses/modes.py) is the config section; an unset timestep_weight takes the mode's
    paper recipe (§3.5, §5.8) through the same build_objective call the trainer makes."""
    raw = _raw(files, preset="a_tide_cross", teacher={"checkpoint": str(files / "student"), "arch": "wedlm"})
    (files / "teacher" / "tokenizer.json").write_text('{"vocab": "student"}')
    for mode, omega in (("taid", "midrange"), ("taid_aligned", "midrange")):
        cfg = config_from_dict({**raw, "preset": "", "objective": {"mode": mode}})
        assert type(cfg.objective) is ObjectiveConfig and cfg.objective.timestep_weight is None
        objective = build_objective(cfg.objective.mode, cfg.objective)
        assert objective.config.schedule(MODES[mode]).timestep_weight == omega
    chunk = config_from_dict({**raw, "teacher": {"checkpoint": str(files / "teacher")}, "preset": "",
                              "objective": {"mode": "alm_taid"}})
    assert chunk.objective.schedule(MODES["alm_taid"]).timestep_weight == "uniform"
    with pytest.raises(ConfigError, match="objective.kl_temperature: expected > 0"):
        config_from_dict({**raw, "objective": {"kl_temperature": 0}})


# --------------------------------------------------------------------------------------------------
# OmegaConf loading (issue 10 item 8): one home for the presets, interpolation, errors naming the field
# --------------------------------------------------------------------------------------------------

_PATHS = ["student.checkpoint={s}", "teacher.checkpoint={t}", "data.train={d}"]


def _paths(files):
    return [p.format(s=files / "student", t=files / "teacher", d=files / "train") for p in _PATHS]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_examples_never_restate_their_preset(name):
    """presets.yaml is the one home of a preset's values: the full-scale example sets none of them (paths and
    layout only), the tiny one only changes some (sizes, dtype), never repeats one with the same value."""
    full = yaml.safe_load((EXAMPLES / f"pipeline_{name}.yaml").read_text())
    tiny = yaml.safe_load((EXAMPLES / "tiny" / f"tiny_pipeline_{name}.yaml").read_text())
    assert full["preset"] == tiny["preset"] == name
    preset = [(section, key, value) for section, values in PRESETS[name].items() for key, value in values.items()]
    assert not [(s, k) for s, k, _ in preset if k in (full.get(s) or {})]
    assert not [(s, k) for s, k, v in preset if (tiny.get(s) or {}).get(k, object()) == v]


def test_dumped_config_loads_back_to_the_same_config(files):
    """The YAML saved beside checkpoints is a config file: loading it gives the same TrainConfig."""
    cfg = config_from_dict(_raw(files, preset="a_tide_shared", optim={"lr": 3e-4}, teacher={"mask_id": 7}))
    path = files / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert yaml.safe_load(path.read_text())["optim"]["lr"] == 3e-4
    assert load_config(str(path)) == cfg


def test_paths_interpolate_the_cache_dir_and_the_environment(files, monkeypatch):
    monkeypatch.setenv("TIDE_CACHE_DIR", str(files))
    monkeypatch.setenv("TIDE_TEST_TEACHER_DIR", "teacher")
    path = files / "c.yaml"
    path.write_text("preset: a_tide_cross\noutput_dir: ${cache_dir}/out\nstudent:\n  checkpoint: ${cache_dir}/student\n"
                    "teacher:\n  checkpoint: ${cache_dir}/${oc.env:TIDE_TEST_TEACHER_DIR}\n"
                    "data:\n  train: ${cache_dir}/train\n")
    cfg = load_config(str(path))
    assert cfg.cache_dir == str(files) and cfg.student.checkpoint == str(files / "student")
    assert cfg.teacher.checkpoint == str(files / "teacher") and cfg.data.train == str(files / "train")
    assert cfg.checkpoint.dir == str(files / "out" / "checkpoints")  # TrainConfig.__post_init__ ran after resolving
    assert load_config(str(path), [f"cache_dir={files / 'nowhere'}", f"student.checkpoint={files / 'student'}",
                                   f"teacher.checkpoint={files / 'teacher'}", f"data.train={files / 'train'}"]
                       ).output_dir == str(files / "nowhere" / "out")
    monkeypatch.setenv("HOME", str(files))
    home = load_config(None, _paths(files) + ["student.checkpoint=~/student"])
    assert home.student.checkpoint == str(files / "student")
    # The earlier ${TIDE_CACHE_DIR} spelling: one error naming the field and what to write instead.
    with pytest.raises(ConfigError, match=r"teacher\.checkpoint: cannot resolve .*TIDE_CACHE_DIR.*\$\{cache_dir\}"):
        load_config(None, _paths(files) + ["teacher.checkpoint=${TIDE_CACHE_DIR}/teacher"])


@pytest.mark.parametrize("override,match", [
    ("bogus=1", "^override 'bogus=1': bogus: unknown top-level key; valid keys are cache_dir, checkpoint, data"),
    ("teacher=3", "^override 'teacher=3': teacher: expected a mapping of fields, got 3$"),
    ("teacher.mask_id=abc", "teacher.mask_id: expected an integer or null, got 'abc'$"),
    ("teacher.moe_grouped_gemm=perhaps", "teacher.moe_grouped_gemm: expected a boolean or null, got 'perhaps'$"),
    ("optim.lr.x=1", "optim.lr: expected a number, got {'x': 1}$"),
    ("name=[1", "override 'name=\\[1': the value is not valid YAML"),
    ("=1", "override '=1': expected KEY=VALUE"),
    ("preset=nope", "^preset: unknown preset 'nope'; valid presets are a_calm, a_tide_cross"),
])
def test_omegaconf_errors_become_one_config_error_naming_the_field(files, override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, _paths(files) + [override])


def test_errors_name_where_the_bad_value_was_written(files):
    path = files / "c.yaml"
    path.write_text("optim:\n  lr: abc\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: optim.lr: expected a number, got 'abc'$"):
        load_config(str(path))
    path.write_text("preset: a_tide_cross\n")
    with pytest.raises(ConfigError, match=r"^override 'optim.train_steps=1.5': optim.train_steps: expected an "
                                          r"integer, got 1.5$"):
        load_config(str(path), _paths(files) + ["optim.train_steps=1.5"])
    # A section's own validation (its __post_init__, run by OmegaConf.to_object) names the file and the field.
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: optim.warmup_ratio: expected a value in"):
        load_config(str(path), _paths(files) + ["optim.warmup_ratio=1.5"])
    path.write_text("teacher:\n  checkpoint: x\n  checkpoint: y\n")
    with pytest.raises(ConfigError, match="c.yaml: not valid YAML: .*duplicate key"):
        load_config(str(path))


def test_empty_values_mean_unset(files):
    """YAML's empty value, ``null`` or ``none``: "" for a string field, None for an optional one, defaults for
    an empty section."""
    path = files / "c.yaml"
    path.write_text("preset: a_tide_cross\nlogging:\nteacher:\n  mask_id: null\n  moe_grouped_gemm: None\n"
                    "data:\n  valid:\n")
    cfg = load_config(str(path), _paths(files) + ["objective.timestep_weight=none", "objective.chunk_rows="])
    assert cfg.data.valid == "" and cfg.teacher.mask_id is None and cfg.teacher.moe_grouped_gemm is None
    assert cfg.objective.timestep_weight is None and cfg.objective.chunk_rows is None
    assert cfg.logging.log_interval == 10
