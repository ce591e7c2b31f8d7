"""The entry points' warning filters drop exactly the known third-party messages: the same text from our own
code, or a new message from the same dependency, still shows."""

import logging
import warnings

from tide_megatron.cli.quiet import THIRD_PARTY_WARNINGS, quiet_third_party_warnings


def test_known_third_party_warnings_go_and_ours_stay(monkeypatch):
    monkeypatch.delenv("TIDE_SHOW_ALL_WARNINGS", raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_third_party_warnings()
        text = "Apex is not installed. Falling back to Torch Norm"
        warnings.warn_explicit(text, UserWarning, "backends.py", 21, module="megatron.core.models.backends")
        warnings.warn_explicit(text, UserWarning, "backend.py", 1, module="tide_megatron.models.backend")
        warnings.warn_explicit("a new notice", UserWarning, "optimizer.py", 1, module="megatron.core.optimizer")
        warnings.warn_explicit("`torch.distributed.all_gather_into_tensor` is deprecated. Please use ...",
                               FutureWarning, "c10d_logger.py", 83, module="torch.distributed.c10d_logger")
    assert [(str(w.message), w.filename) for w in seen] == [(text, "backend.py"), ("a new notice", "optimizer.py")]
    assert all(reason for *_, reason in THIRD_PARTY_WARNINGS)


def test_known_transformers_log_line_goes_and_others_stay(caplog, monkeypatch):
    monkeypatch.delenv("TIDE_SHOW_ALL_WARNINGS", raising=False)
    quiet_third_party_warnings()
    logger = logging.getLogger("transformers.configuration_utils")
    with caplog.at_level(logging.WARNING, logger="transformers.configuration_utils"):
        logger.warning("You are using a model of type `llada2_moe` to instantiate a model of type ``. This may ...")
        logger.warning("some other transformers warning")
    assert [r.getMessage() for r in caplog.records] == ["some other transformers warning"]
