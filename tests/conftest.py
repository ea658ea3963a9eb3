import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

from turnrl.learner import bf16_supported  # noqa: E402 (it imports transformers: after the line above)

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"
needs_gsm8k = pytest.mark.skipif(not GSM8K.is_file(), reason=f"GSM8K train split not found at {GSM8K}")


#: whether ``model.dtype = "bf16"`` runs in bf16 here: a CPU without AVX-512 (an AVX2-only
#: AMD EPYC, say) runs it in fp32 with one line saying so
BF16 = bf16_supported()
needs_bf16 = pytest.mark.skipif(not BF16, reason="this machine has no native bf16 kernels: model.dtype = 'bf16' runs in fp32")


@pytest.fixture(scope="session")
def tokenizer():
    from turnrl.models import load_tokenizer

    return load_tokenizer("smollm2-135m")  # the real SmolLM2 tokenizer from the bundled GGUF


def make_tiny_model(seed: int = 0, vocab_size: int = 49152, init_std: float = 0.02):
    """A randomly initialised 2-layer Llama with SmolLM2's vocabulary. At transformers'
    default ``init_std`` (0.02) its greedy tokens hardly depend on the context (token 198,
    whatever the prompt): tests that compare tokens across contexts take 0.2 (``lively_model``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                      initializer_range=init_std)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture
def lively_model():
    """The tiny model with weights wide enough that its greedy tokens follow the context."""
    return make_tiny_model(init_std=0.2)


@pytest.fixture
def chat(tokenizer):
    from turnrl.chat import ChatFormat

    return ChatFormat(tokenizer)
