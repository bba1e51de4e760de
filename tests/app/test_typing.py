"""The wrapper is typed as the SDK is: mypy passes code that uses it and fails a misspelled argument."""

import os
import subprocess
import sys
from pathlib import Path

import tierguard

CASES = Path(__file__).parent / "typing_cases"


def test_mypy_checks_calls_through_the_wrapper(tmp_path_factory):
    package_root = Path(tierguard.__file__).resolve().parents[1]  # the tierguard these tests import
    env = {**os.environ, "MYPYPATH": str(package_root)}
    cache = tmp_path_factory.getbasetemp() / "mypy-cache"
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-error-summary", "--cache-dir",
         str(cache), "uses_the_wrapper.py", "misspells_an_argument.py"],
        cwd=CASES, env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert result.returncode == 1, result.stdout + result.stderr
    assert all(line.startswith("misspells_an_argument.py:6:") for line in errors), result.stdout
    assert len(errors) == 1 and "create" in errors[0], result.stdout
