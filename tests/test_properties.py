"""Property-based tests: arbitrary input never crashes config parsing, task loading,
answer extraction or chat stitching with anything but the project's own errors."""
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from turnrl.config import ConfigError, RunConfig, load_config, parse_overrides
from turnrl.envs import answers
from turnrl.envs.tasks import DataError, FileTasks
from turnrl.types import Message

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- config ------------------------------------------------------------------------------------
FIELDS = [f"--{s}.{f}" for s, info in RunConfig.model_fields.items() for f in info.annotation.model_fields]
words = st.one_of(
    st.text(max_size=12),
    st.sampled_from(FIELDS + ["--train", "--train.lr.x", "--.", "--a.b", "--train.lr=", "--env.kwargs.x", "--task",
                              "1", "-1", "0.5", "1e999", "NaN", "true", "null", "[]", "[1, 2]", "{}", '{"a": 1}', '"s"',
                              "retry", "guess_number", "mod:Cls", "os:path", ":", "file", "arithmetic"]),
)


@FAST
@given(st.lists(words, max_size=8))
@example(["--train.lr", "1", "--train.lr.x", "2"])
def test_parse_overrides_returns_a_dict_or_a_config_error(args):
    try:
        out = parse_overrides(args)
    except ConfigError:
        return
    assert isinstance(out, dict)


@FAST
@given(st.lists(st.tuples(st.sampled_from(FIELDS), words), max_size=6))
def test_load_config_from_overrides_returns_a_config_or_a_config_error(pairs):
    try:
        cfg = load_config(None, [x for pair in pairs for x in pair])
    except ConfigError as e:
        assert str(e)
        return
    assert isinstance(cfg, RunConfig)


@FAST
@given(st.text(max_size=200))
@example('[train]\nlr = "x"\n')
@example("[train\n")
@example("train = 3\n")
@example("[env]\nname = 5\n")
def test_load_config_from_any_toml_text_returns_a_config_or_a_config_error(text):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.toml"
        p.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            cfg = load_config(p)
        except ConfigError:
            return
        assert isinstance(cfg, RunConfig)


# -- task files --------------------------------------------------------------------------------
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                           max_leaves=8)
rows = st.dictionaries(st.sampled_from(["question", "answer", "q", "a", ""]), json_values, max_size=3)


def _load(content: bytes, suffix: str, **kw):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"tasks{suffix}"
        p.write_bytes(content)
        try:
            tasks = FileTasks(p, **kw)
        except DataError as e:
            assert str(e).startswith(str(p)), str(e)  # the error names the file
            return None
        return [tasks[i] for i in range(len(tasks))]


@FAST
@given(st.binary(max_size=200), st.sampled_from([".jsonl", ".csv", ".parquet"]),
       st.sampled_from(["plain", "gsm8k"]), st.sampled_from(["math", "numeric", "exact"]))
@example(b"\xff\xfe\n", ".csv", "plain", "math")
@example(b"question,answer\nq,1,extra\n", ".csv", "plain", "math")
@example(b"question,answer\n,1,extra\n", ".csv", "plain", "math")
@example(b"PAR1", ".parquet", "plain", "math")
def test_file_tasks_on_any_bytes_load_or_raise_a_data_error(content, suffix, answer_format, verifier):
    _load(content, suffix, answer_format=answer_format, verifier=verifier)


@FAST
@given(st.lists(st.one_of(rows, json_values), min_size=1, max_size=5), st.sampled_from(["plain", "gsm8k"]),
       st.sampled_from(["math", "numeric"]))
def test_file_tasks_on_any_jsonl_rows_load_or_raise_a_data_error(records, answer_format, verifier):
    content = "\n".join(json.dumps(r) for r in records).encode()
    tasks = _load(content, ".jsonl", answer_format=answer_format, verifier=verifier)
    for t in tasks or []:
        assert isinstance(t.question, str) and isinstance(t.answer, str) and t.answer


# -- answers -----------------------------------------------------------------------------------
replies = st.one_of(
    st.text(max_size=80),
    st.lists(st.sampled_from(["<answer>", "</answer>", "\\boxed{", "{", "}", "A)", "(B)", " C ", "answer: D", "-",
                              "1,234", "3.5", "inf", "nan", "1e999", "-0", "1/0", "$", " ", "\n", "x"]),
             max_size=10).map("".join),
)


@FAST
@given(replies)
@example("<answer>inf</answer>")
@example("<answer>nan</answer>")
@example("<answer>1e999</answer>")
def test_extractors_and_normalize_never_crash(text):
    for name, extract in answers.EXTRACTORS.items():
        got = extract(text)
        assert got is None or isinstance(got, str), name
    assert isinstance(answers.normalize(text), str)
    n = answers.parse_number(text)
    assert n is None or isinstance(n, float)


@FAST
@given(replies, replies)
@example("inf", "inf")
@example("nan", "1")
def test_exact_and_numeric_verifiers_return_a_bool(pred, ref):
    for name in ("exact", "numeric", "choice"):
        assert isinstance(answers.VERIFIERS[name](pred, ref), bool), name


@settings(max_examples=25, deadline=None)
@given(replies, st.sampled_from(["42", "3.5", "\\frac{1}{2}", "x^2", "B"]))
def test_math_verifier_returns_a_bool(pred, ref):
    assert isinstance(answers.verify_math(pred, ref), bool)


# -- chat stitching ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chat_format(tokenizer):
    from turnrl.chat import ChatFormat

    return ChatFormat(tokenizer)


contents = st.one_of(st.text(max_size=60),
                     st.lists(st.sampled_from(["<|im_end|>", "<|im_start|>", "user", "\n", " ", "é", "🙂", "{{ x }}",
                                               "{% if %}", "\x00", "Incorrect.", "42"]), max_size=6).map("".join))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(question=contents, reply=contents, feedback=contents, stopped=st.booleans())
def test_stitched_ids_decode_to_the_template_of_any_conversation(chat_format, tokenizer, question, reply, feedback, stopped):
    c = chat_format
    opening = [Message("user", question)]
    action = c.encode(reply) + ([c.end_of_turn_id] if stopped else [])
    ids = c.prompt_ids(opening) + action + c.continuation_ids([Message("user", feedback)], stopped,
                                                                action[-1] if action else None)
    whole = tokenizer.apply_chat_template([{"role": "user", "content": question}, {"role": "assistant", "content": reply},
                                           {"role": "user", "content": feedback}], tokenize=False, add_generation_prompt=True)
    # the same text as the whole conversation's template, as far as the tokenizer itself round-trips
    # it (this GGUF tokenizer drops some bytes of rare characters, e.g. U+40000, whoever encodes them)
    assert tokenizer.decode(ids) == tokenizer.decode(c.encode(whole))
    assert isinstance(c.decode_action(action), str)


@pytest.mark.parametrize("name", [".x:Y", ":Y", "a..b:C", "os:nope", "turnrl_no_such_module:X"])
def test_a_module_path_env_that_cannot_be_imported_is_one_value_error(name):
    from turnrl.envs.registry import resolve

    with pytest.raises(ValueError, match=f"env '{name}': cannot import"):
        resolve(name)
