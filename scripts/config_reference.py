"""Write docs/config.md, the reference of every config field, from the pydantic models in
turnrl/config.py (so it cannot drift: tests/test_config_reference.py regenerates it and
compares).

    .venv/bin/python scripts/config_reference.py           # rewrite docs/config.md
    .venv/bin/python scripts/config_reference.py --check   # exit 1 if it is out of date
"""
from __future__ import annotations

import inspect
import json
import sys
import typing
from pathlib import Path

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from turnrl.config import RunConfig

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "config.md"
COMMAND = "python scripts/config_reference.py"

HEADER = f"""# Config reference

Every field of a turnrl config, section by section. A TOML file sets them as
`[section] key = value`; the command line overrides any of them with
`--section.key value` (values are read as JSON when they parse: numbers, `true`,
lists). Unknown keys, wrong types, values out of range, and fields the chosen setting
would ignore are errors that name the field.

Generated from `turnrl/config.py` by `{COMMAND}`; do not edit by hand.
"""


def type_name(annotation) -> str:
    """A TOML-reader's name for a field's type: ``"a" | "b"``, ``int``, ``list of str``, ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f'`{json.dumps(a)}`' for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or unset" if type(None) in args else "")
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is tuple:
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if origin is dict:
        return "table"
    if annotation is typing.Any:
        return "any"
    return {"str": "string", "bool": "true / false"}.get(getattr(annotation, "__name__", ""), getattr(annotation, "__name__", str(annotation)))


def bounds(info: FieldInfo) -> str:
    marks = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    out = []
    for m in info.metadata:
        for attr, sym in marks.items():
            v = getattr(m, attr, None)
            if v is not None:
                out.append(f"{sym} {v}")
    return ", ".join(out)


def default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if value is None:
        return "unset"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    parts = [HEADER]
    for section, sinfo in RunConfig.model_fields.items():
        model = sinfo.annotation
        doc = inspect.getdoc(model)
        parts.append(f"\n## [{section}]\n")
        if doc and model.__doc__ is not None and "__doc__" in model.__dict__:
            parts.append(f"\n{doc}\n")
        parts.append("\n| field | type | default | allowed | description |\n|---|---|---|---|---|\n")
        for name, info in model.model_fields.items():
            parts.append(f"| `{section}.{name}` | {type_name(info.annotation)} | {cell(default(info))} | "
                         f"{bounds(info)} | {cell(info.description or '')} |\n")
    return "".join(parts)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is out of date; regenerate it with: {COMMAND}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
