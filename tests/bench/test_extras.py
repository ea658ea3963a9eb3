"""Each bench script imports only what the base install or its named extra provides."""
import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("-", "_") for r in reqs}


def _imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            mods.add(node.module.split(".")[0])
    siblings = {p.stem for p in (ROOT / "bench").glob("*.py")}  # another bench script (bench/ is on the path)
    return mods - set(sys.stdlib_module_names) - {"turnrl", "__future__"} - siblings


def test_bench_scripts_import_only_the_base_install_or_the_bench_extra():
    base = _names(PROJECT["dependencies"])
    bench = _names(PROJECT["optional-dependencies"]["bench"])
    for script in sorted((ROOT / "bench").glob("*.py")):
        needs = _imports(script) - base
        allowed = bench if script.name == "vs_trl.py" else set()
        assert needs <= allowed, f"{script.name} imports {sorted(needs - allowed)}, in no extra it is documented with"
    assert _imports(ROOT / "bench" / "vs_trl.py") - base == {"trl", "datasets"}
