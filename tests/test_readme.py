import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [l.split("#")[0].strip() for l in first_block.splitlines() if l.strip()]
    assert len(commands) == 2 and "turnrl train configs/ufo_demo.toml" in commands[0]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_own_env_example_runs_and_passes_check_env():
    code = re.search(r"## Your own env\n\n```python\n(.*?)```", README, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # ends with check_env(Guess())
    env = namespace["Guess"]()
    env.reset(3)
    assert env.step("3").terminated


def test_config_reference_is_generated_from_the_config_models():
    import importlib.util

    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    text = ref.render()
    from turnrl.config import RunConfig

    for section, info in RunConfig.model_fields.items():  # every field has its row
        for name in info.annotation.model_fields:
            assert f"| `{section}.{name}` |" in text
    assert "| `train.lr` | float | `1e-05` | > 0 | AdamW learning rate |" in text
    assert (ROOT / "docs" / "config.md").read_text() == text, (
        "docs/config.md is out of date with turnrl/config.py; regenerate it with: "
        ".venv/bin/python scripts/config_reference.py")
