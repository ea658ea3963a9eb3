"""scripts/system_packages.sh (run by scripts/setup.sh): bubblewrap and Chromium from apt
when root, else the exact command. apt-get and id are stand-ins on a PATH of their own:
a test must not install system packages."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "system_packages.sh"
BASH = shutil.which("bash")


def _run(tmp_path, uid: int, have=(), mode="auto", apt_works=True):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "apt.log"
    (bin_ / "id").write_text(f"#!{BASH}\necho {uid}\n")
    (bin_ / "apt-get").write_text(  # logs its arguments; "installs" a package by putting its program on PATH
        f"#!{sys.executable}\nimport sys, pathlib\nd = pathlib.Path({str(bin_)!r})\n"
        f"with open({str(log)!r}, 'a') as f: print(*sys.argv[1:], file=f)\n"
        + ("progs = {'bubblewrap': 'bwrap', 'chromium': 'chromium'}\n"
           "for a in sys.argv[2:] if sys.argv[1] == 'install' else []:\n"
           "    if a in progs: (d / progs[a]).write_text('#!/bin/sh\\n'); (d / progs[a]).chmod(0o755)\n"
           if apt_works else "sys.exit(100 if sys.argv[1] == 'install' else 0)\n"))
    for prog in have:
        (bin_ / prog).write_text(f"#!{BASH}\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    p = subprocess.run([BASH, str(SCRIPT)], capture_output=True, text=True,
                       env={"PATH": str(bin_), "TURNRL_SYSTEM_PACKAGES": mode})
    return p, (log.read_text().splitlines() if log.exists() else [])


def test_root_installs_only_the_missing_packages_quietly(tmp_path):
    p, apt = _run(tmp_path, uid=0, have=["bwrap"])
    assert p.returncode == 0 and apt == ["update -qq", "install -y -qq chromium"]
    assert p.stdout == "setup: installing chromium (apt-get)\n" and p.stderr == ""


def test_nothing_happens_when_both_are_present(tmp_path):
    p, apt = _run(tmp_path, uid=0, have=["bwrap", "chromium"])
    assert (p.returncode, apt, p.stdout, p.stderr) == (0, [], "", "")


def test_without_root_the_exact_command_is_printed(tmp_path):
    p, apt = _run(tmp_path, uid=1000)
    assert p.returncode == 0 and apt == []
    assert "install with: sudo sh -c 'apt-get update && apt-get install -y bubblewrap chromium'" in p.stderr


def test_a_failed_install_prints_the_command_and_require_mode_fails(tmp_path):
    p, _ = _run(tmp_path, uid=0, apt_works=False, mode="require")
    assert p.returncode == 1
    assert "try: apt-get update && apt-get install -y bubblewrap chromium" in p.stderr
    assert "bubblewrap chromium still missing" in p.stderr


def test_setup_and_ci_use_it():
    assert "scripts/system_packages.sh" in (ROOT / "scripts" / "setup.sh").read_text()
    assert "TURNRL_SYSTEM_PACKAGES=require" in (ROOT / ".ci" / "run").read_text()
