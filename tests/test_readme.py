"""The README's two set-up commands stay true: CI runs exactly the second one."""

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:bash|sh)\n(.*?)```", text, re.S)
    assert block, "README.md must open with a bash block holding the set-up commands"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_exactly_two_commands():
    main_job, tests = setup_commands()
    assert main_job.startswith("pip install -e .") and "clrl run " in main_job
    config = shlex.split(main_job)[-1]
    assert (ROOT / config).is_file(), f"the main job's config {config} must exist"
    assert tests.startswith('pip install -e ".[dev]"') and tests.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    install, run = (part.strip() for part in setup_commands()[1].split("&&"))
    assert install in ci and run in ci
