"""Choosing the sampler: ``[scale] engine``, ``--engine``; vLLM missing is one line, early."""
import pytest

from turnrl.cli import main
from turnrl.engine.vllm import vllm_available

no_vllm = pytest.mark.skipif(vllm_available(), reason="vLLM is installed here")


def _no_model(*a, **k):
    raise AssertionError("a model loaded before the missing vLLM was reported")


@no_vllm
def test_engine_vllm_without_vllm_is_one_line_before_any_model_loads(capsys, monkeypatch):
    import turnrl.build
    import turnrl.serve
    import turnrl.trainer

    for mod, name in ((turnrl.build, "build_policy"), (turnrl.build, "load_for_inference"),
                      (turnrl.trainer, "build_policy")):
        monkeypatch.setattr(mod, name, _no_model)
    for argv in (["train", "--scale.engine", "vllm"], ["eval", "--engine", "vllm"], ["rollout", "--engine", "vllm"],
                 ["serve", "smollm2-135m", "--engine", "vllm"]):
        assert main(argv) in (1, 2), argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert "needs vLLM" in err and "bash scripts/setup_vllm.sh" in err and "pip install -e .[vllm]" in err, err


@no_vllm
def test_build_engine_for_vllm_without_vllm_names_the_install(tiny_model, tokenizer):
    from turnrl.build import build_engine
    from turnrl.engine.vllm import VLLMUnavailable

    with pytest.raises(VLLMUnavailable, match="scripts/setup_vllm.sh"):
        build_engine(tiny_model, tokenizer, "vllm")


def test_hf_is_the_default_engine_and_vllm_kwargs_need_vllm(tiny_model, tokenizer):
    from turnrl.build import build_engine
    from turnrl.config import ConfigError, load_config
    from turnrl.engine.hf import HFEngine

    assert isinstance(build_engine(tiny_model, tokenizer)[0], HFEngine)
    assert load_config(None, []).scale.engine == "hf"
    with pytest.raises(ConfigError, match="vllm_kwargs would be ignored"):
        load_config(None, ["--scale.vllm_kwargs", '{"enforce_eager": true}'])
    with pytest.raises(ConfigError, match="'hf' or 'vllm'"):
        build_engine(tiny_model, tokenizer, "sglang")
