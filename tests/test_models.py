import pytest

from turnrl.models import ModelLoadError, ensure_default_model, load_model, load_tokenizer


def test_default_model_is_converted_once_to_safetensors():
    d = ensure_default_model()
    assert (d / "model.safetensors").is_file() and (d / "config.json").is_file()
    assert ensure_default_model() == d  # cached


def test_default_tokenizer_has_smollm2_chatml_template(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "no_such_model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_tokenizer(str(tmp_path / "empty"))


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="hub could not provide it"):
        load_tokenizer("someone/definitely-not-cached-model")


def test_local_hf_directory_loads(tmp_path, tokenizer):
    from tests.conftest import make_tiny_model

    make_tiny_model().save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    assert load_model(str(tmp_path / "m")).config.hidden_size == 32
    assert load_tokenizer(str(tmp_path / "m")).chat_template


def test_a_hub_id_that_is_not_cached_fails_at_once_when_the_hub_cannot_be_reached(monkeypatch):
    import socket
    import time

    with socket.socket() as s:  # a local port nothing listens on: the "hub" refuses at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE")  # online as far as turnrl knows; no request leaves the machine
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError, match=rf"not in the Hugging Face cache, and the hub \(127\.0\.0\.1:{port}\) "
                                             r"cannot be reached"):
        load_model("no-such-org/no-such-model")
    assert time.monotonic() - t0 < 5  # huggingface_hub's own retries took about a minute
