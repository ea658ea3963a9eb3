import copy

import pytest

from turnrl.chat import ChatFormat
from turnrl.types import Message


def test_continuation_after_stopped_turn_has_only_the_newline_glue(chat, tokenizer):
    ids = chat.continuation_ids([Message("user", "Incorrect.")], stopped=True, last_id=tokenizer.eos_token_id)
    assert tokenizer.decode(ids) == "\n<|im_start|>user\nIncorrect.<|im_end|>\n<|im_start|>assistant\n"


def test_continuation_after_cut_turn_closes_the_assistant_message(chat, tokenizer):
    ids = chat.continuation_ids([Message("user", "Incorrect.")], stopped=False, last_id=42)
    assert tokenizer.decode(ids).startswith("<|im_end|>\n<|im_start|>user\n")


def test_stop_ids_include_chatml_end(chat, tokenizer):
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in chat.stop_ids


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


@pytest.fixture
def llama3_tokenizer(tokenizer):
    """The SmolLM2 tokenizer with Llama-3's special tokens and chat template: its eos
    (<|end_of_text|>) has a smaller id than the end-of-turn token the template writes."""
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"eos_token": "<|end_of_text|>",
                            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def test_end_of_turn_is_the_token_the_template_writes_after_a_reply(chat, tokenizer, llama3_tokenizer):
    assert chat.end_of_turn_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    llama = ChatFormat(llama3_tokenizer)
    eot, eos = (llama3_tokenizer.convert_tokens_to_ids(t) for t in ("<|eot_id|>", "<|end_of_text|>"))
    assert llama.end_of_turn_id == eot and {eos, eot} <= set(llama.stop_ids) and llama.stop_ids[0] != eot


def test_replayed_reply_ends_with_the_templates_end_of_turn(llama3_tokenizer):
    from tests.conftest import make_tiny_model
    from turnrl.engine import HFEngine, SamplingParams
    from turnrl.envs import RetryEnv, Task
    from turnrl.rollout import RolloutConfig, collect

    tok, llama = llama3_tokenizer, ChatFormat(llama3_tokenizer)
    task = Task("t", "What is 2 + 3?", "5", "numeric", "last_number")
    eng = HFEngine(make_tiny_model(vocab_size=len(tok)), llama.stop_ids, tok.pad_token_id)
    cfg = RolloutConfig(SamplingParams(temperature=1.0, max_new_tokens=3, seed=0))
    (ep,) = collect([RetryEnv([task], max_turns=2)], [0], [0], eng, llama, cfg, prefixes=[["7"]])
    replayed = ep.turns[0]
    assert replayed.action_ids == tok.encode("7", add_special_tokens=False) + [tok.convert_tokens_to_ids("<|eot_id|>")]
    # the stitched ids up to the live turn are the template of the conversation so far
    conv = [{"role": "user", "content": task.question}, {"role": "assistant", "content": "7"},
            {"role": "user", "content": "Incorrect. Please think again."}]
    stitched = replayed.obs_ids + replayed.action_ids + ep.turns[1].obs_ids
    assert tok.decode(stitched) == tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)


def test_chatml_is_append_only_and_a_template_that_drops_reasoning_is_not(chat, tokenizer):
    from tests.test_rollout import QWEN3_STYLE

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = QWEN3_STYLE
    assert chat.append_only and not ChatFormat(tok).append_only


def test_a_template_that_cannot_render_names_the_model_and_the_message(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = ("{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tool role') }}{% endif %}"
                         "{{ m.role + ': ' + m.content + '\\n' }}{% endfor %}")
    chat = ChatFormat(tok, name="my-model")
    msgs = [Message("user", "q"), Message("assistant", "a"), Message("tool", "out"), Message("user", "more")]
    with pytest.raises(ValueError, match=r"chat template of model 'my-model' cannot render message 2 \(role 'tool'\) of 4"):
        chat.render_ids(msgs)
