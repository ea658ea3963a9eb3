from turnrl.types import Message


def test_continuation_after_stopped_turn_has_only_the_newline_glue(chat, tokenizer):
    ids = chat.continuation_ids([Message("user", "Incorrect.")], stopped=True, last_id=tokenizer.eos_token_id)
    assert tokenizer.decode(ids) == "\n<|im_start|>user\nIncorrect.<|im_end|>\n<|im_start|>assistant\n"


def test_continuation_after_cut_turn_closes_the_assistant_message(chat, tokenizer):
    ids = chat.continuation_ids([Message("user", "Incorrect.")], stopped=False, last_id=42)
    assert tokenizer.decode(ids).startswith("<|im_end|>\n<|im_start|>user\n")


def test_stop_ids_include_chatml_end(chat, tokenizer):
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in chat.stop_ids
