"""Chat-template tokens for multi-turn rollouts.

Token-in-token-out: the policy's sampled ids are kept as they are; only the tokens
*around* them (template glue, feedback messages, the next generation prompt) are
produced here. For append-only templates (ChatML and most others) the stitched ids
decode to the same text as the template applied to the whole conversation.

Templates that rewrite history (Qwen3 drops the ``<think>`` blocks of earlier assistant
turns) are not append-only: ``append_only`` is False for them, and the rollout renders
the whole conversation with the template each turn (``render_ids``) instead of stitching.
"""
from __future__ import annotations

from turnrl.types import Message

_X, _Y = "\x00turnrl-user\x00", "\x00turnrl-assistant\x00"


#: the probe conversation that tells an append-only template from one that rewrites history
_PROBE = [Message("user", "a"), Message("assistant", "<think>\nr\n</think>\n\nb"), Message("user", "c")]


class ChatFormat:
    def __init__(self, tokenizer, name: str | None = None):
        self.tok = tokenizer
        #: the model named in errors (its path or hub id by default)
        self.name = name or getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        base = self._render([Message("user", _X), Message("assistant", _Y)], gen=False)
        self._assistant_suffix = base[base.index(_Y) + len(_Y):]  # e.g. "<|im_end|>\n" for ChatML
        self._base = base
        #: the token the template itself writes right after an assistant message (ChatML
        #: ``<|im_end|>``, Llama-3 ``<|eot_id|>``); None when it writes no special token there
        self.end_of_turn_id = self._end_of_turn_id()
        eot = [] if self.end_of_turn_id is None else [self.end_of_turn_id]
        self.stop_ids = sorted({tokenizer.eos_token_id, *self._extra_stop_ids(), *eot})
        #: rendering a conversation one message longer only appends text (no earlier turn
        #: is rewritten, e.g. no reasoning dropped): turns can be stitched token by token
        self.append_only = self._render(_PROBE, gen=True).startswith(self._render(_PROBE[:2], gen=False))

    def _end_of_turn_id(self) -> int | None:
        ids = self.encode(self._assistant_suffix)
        if not ids:
            return None
        special = set(self.tok.all_special_ids)
        special |= {i for i, t in getattr(self.tok, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
        return ids[0] if ids[0] in special else None

    def _extra_stop_ids(self) -> list[int]:
        ids = []
        for t in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
            i = self.tok.convert_tokens_to_ids(t)
            if isinstance(i, int) and i != self.tok.unk_token_id and i is not None:
                ids.append(i)
        return ids

    def _render(self, messages: list[Message], gen: bool) -> str:
        try:
            return self.tok.apply_chat_template(
                [m.as_dict() for m in messages], tokenize=False, add_generation_prompt=gen
            )
        except Exception as e:  # noqa: BLE001 - re-raised naming the model and the message
            raise ValueError(self._render_error(messages, gen, e)) from e

    def _render_error(self, messages: list[Message], gen: bool, err: Exception) -> str:
        """The first message whose conversation prefix the template cannot render."""
        bad = len(messages) - 1
        for k in range(1, len(messages) + 1):
            try:
                self.tok.apply_chat_template([m.as_dict() for m in messages[:k]], tokenize=False,
                                             add_generation_prompt=gen and k == len(messages))
            except Exception:  # noqa: BLE001 - locating the message, the error is reported below
                bad = k - 1
                break
        role = messages[bad].role if messages else "?"
        return (f"chat template of model {self.name!r} cannot render message {bad} (role {role!r}) of "
                f"{len(messages)}: {type(err).__name__}: {err}")

    def render_ids(self, messages: list[Message]) -> list[int]:
        """The whole conversation as the template renders it, plus the generation prompt:
        the context of the next action when turns are not stitched (history-rewriting
        templates, Markovian or windowed contexts)."""
        return self.prompt_ids(messages)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """Ids of the opening conversation plus the generation prompt."""
        return self.encode(self._render(messages, gen=True))

    def continuation_ids(self, new_messages: list[Message], stopped: bool, last_id: int | None) -> list[int]:
        """Tokens to append after an assistant turn: the rest of the assistant's closing
        glue (all of it if the turn was cut by length), the new messages, and the next
        generation prompt."""
        suffix = self._assistant_suffix
        if stopped and last_id is not None:
            stop_text = self.tok.decode([last_id])
            if suffix.startswith(stop_text):
                suffix = suffix[len(stop_text):]
        full = self._render([Message("user", _X), Message("assistant", _Y), *new_messages], gen=True)
        if not full.startswith(self._base):
            raise ValueError("chat template is not append-only; multi-turn token stitching needs one that is")
        return self.encode(suffix + full[len(self._base):])

    def replay_ids(self, text: str) -> list[int]:
        """A finished assistant reply as the template writes it: its ids, then the
        end-of-turn token (a replayed earlier answer, RISE-style)."""
        if self.end_of_turn_id is None:
            raise ValueError("the chat template writes no end-of-turn token after an assistant message; "
                             "replayed prefixes need one")
        return self.encode(text) + [self.end_of_turn_id]

    def decode_action(self, ids: list[int]) -> str:
        """Reply text for parsing (special tokens dropped)."""
        return self.tok.decode(ids, skip_special_tokens=True)

    def render(self, messages: list[Message]) -> str:
        return self._render(messages, gen=False)
