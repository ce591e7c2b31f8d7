"""teacher.placement in the config: the bad layouts of a separate teacher pool and an offline cache of a token mode
are each one error naming the field, before anything is built (issue: beyond two ranks, item 3, bad input)."""

import json

import pytest

from tide_megatron.config import ConfigError, config_from_dict, paths_unchecked


def _cfg(preset="a_tide_cross", **sections):
    raw = {"preset": preset, "output_dir": "out"}
    for key, value in sections.items():
        raw[key] = value
    with paths_unchecked():
        return config_from_dict(raw)


def test_colocated_is_the_default_and_spans_the_world():
    cfg = _cfg(teacher={"ep": 2})
    assert cfg.teacher.placement == "colocated" and cfg.teacher.ranks == 0
    assert cfg.check_world_size(4) == (4, 4)


def test_a_separate_pool_takes_the_last_ranks_and_the_student_the_rest():
    cfg = _cfg(teacher={"tp": 2, "placement": "separate", "ranks": 2})
    assert cfg.student_world_size(4) == 2
    assert cfg.check_world_size(4) == (1, 2)  # one TP2 teacher replica serves the two student ranks
    cfg = _cfg(teacher={"ep": 2, "placement": "separate", "ranks": 2})
    assert cfg.check_world_size(6) == (2, 4)


@pytest.mark.parametrize("teacher, world, message", [
    ({"placement": "separate"}, 4, r"teacher\.ranks: expected the size of the teacher pool \(>= 1\)"),
    ({"placement": "separate", "ranks": 2, "tp": 2, "pp": 2}, 4,
     r"teacher\.ranks: a teacher pool of 2 ranks cannot hold teacher\.tp x teacher\.pp = 2 x 2 = 4"),
    ({"placement": "separate", "ranks": 3, "tp": 2}, 4, r"teacher\.ranks: a teacher pool of 3 ranks cannot hold"),
    ({"placement": "colocated", "ranks": 2}, 4, r"teacher\.ranks: only teacher\.placement=separate has a teacher pool"),
    ({"placement": "remote"}, 4, r"teacher\.placement: expected colocated\|separate\|offline"),
])
def test_bad_pools_are_refused_when_the_config_loads(teacher, world, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(teacher=teacher)


@pytest.mark.parametrize("teacher, student, world, message", [
    ({"placement": "separate", "ranks": 4}, {}, 4, r"teacher\.ranks: the teacher pool takes 4 of the 4 ranks .* "
                                                    r"leaves none for the student"),
    ({"placement": "separate", "ranks": 1}, {"tp": 2}, 4, r"student: tp\*pp = 2\*1 = 2 does not divide the world "
                                                         r"size 3 \(the 3 ranks left beside teacher\.ranks=1\)"),
    ({"placement": "separate", "ranks": 3}, {}, 5, r"teacher\.ranks: the teacher pool holds 3 teacher replicas .* "
                                                   r"the student has 2 data-parallel ranks"),
])
def test_pools_whose_rank_counts_do_not_add_up_to_the_world_are_refused(teacher, student, world, message):
    cfg = _cfg(teacher=teacher, student=student)
    with pytest.raises(ConfigError, match=message):
        cfg.check_world_size(world)


def test_offline_token_modes_are_refused_with_the_row_size(tmp_path):
    """The row is the shared vocabulary (objective.shared_vocab), else the teacher checkpoint's vocab_size."""
    with pytest.raises(ConfigError, match=r"teacher\.placement: offline payloads are one fp32 per teacher token .* "
                                          r"objective\.mode='kl_aligned' distils full-vocabulary logit rows "
                                          r"\(151,646 fp32 = 592 KiB per distilled position"):
        _cfg("b_kl", teacher={"placement": "offline"})
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 151936}))
    with pytest.raises(ConfigError, match=r"\(151,936 fp32 = 594 KiB per distilled position"):
        _cfg("b_kl", teacher={"placement": "offline", "checkpoint": str(tmp_path)}, objective={"shared_vocab": None})
    cfg = _cfg("a_tide_shared", teacher={"placement": "offline"}, data={"train": "/data/a"})
    assert cfg.teacher_cache_path == "/data/a.teacher-cache"
    assert _cfg("a_calm", teacher={"placement": "offline", "cache": "/c"}).teacher_cache_path == "/c"


def test_a_cache_of_a_mode_without_teacher_is_refused_by_the_cache_command():
    cfg = _cfg("a_tide_cross", objective={"mode": "ce"}, teacher={"placement": "offline"})
    with pytest.raises(ConfigError, match="objective.mode: 'ce' has no teacher term"):
        cfg.check_offline_payload(force=True)
