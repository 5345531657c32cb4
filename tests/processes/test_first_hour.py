"""A new user's first hour on a machine without ../shared: the demo and the tests say, once and in
seconds, which corpus they looked for, how to point them at one, and where the corpora come from."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from tests.conftest import REPO, SHARED_DATA_VARIABLE


def test_demo_without_a_corpus_stops_before_set_up_and_says_what_to_do(tmp_path):
    missing = tmp_path / "no-such-corpus"
    started = time.monotonic()
    result = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], capture_output=True, text=True,
                            env={**os.environ, "FEDBIOBERT_DATA": str(missing)}, timeout=60)
    assert time.monotonic() - started < 10  # nothing installed, nothing launched
    assert result.returncode == 2 and result.stdout == ""
    message = result.stderr
    assert f"demo: no corpus at '{missing}'" in message
    assert "FEDBIOBERT_DATA=/path/to/corpus bash scripts/demo.sh" in message and "--data_dir" in message
    assert '"Data sources"' in message
    assert 3 <= len(message.splitlines()) <= 8


def test_demo_checks_a_data_dir_given_among_its_options(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), str(tmp_path / "out"), "--data_dir",
                             str(tmp_path / "empty")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"no corpus at '{tmp_path / 'empty'}'" in result.stderr
    assert not (tmp_path / "out").exists()


def _pytest_without_shared_data(missing, *paths):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *[str(REPO / "tests" / path) for path in paths]], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, SHARED_DATA_VARIABLE: str(missing)}, timeout=120)


def test_tests_without_the_shared_data_stop_once_naming_the_path_and_variable(tmp_path):
    missing = tmp_path / "shared" / "data"
    result = _pytest_without_shared_data(missing, "unit/test_topology.py", "integration/test_data_masking.py")
    output = result.stdout + result.stderr
    assert result.returncode == 4, output  # pytest's usage error: no test ran
    assert output.count("the tests need the shared data folder") == 1, output
    assert f"looked for at '{missing}'" in output and f"{SHARED_DATA_VARIABLE}=" in output
    assert "FileNotFoundError" not in output and "Traceback" not in output


def test_unit_tests_run_without_the_shared_data(tmp_path):
    result = _pytest_without_shared_data(tmp_path / "nowhere", "unit/test_topology.py", "unit/test_messages.py")
    output = result.stdout + result.stderr
    assert result.returncode == 0 and " passed" in output, output


def test_readme_documents_the_data_and_the_environment_variables():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "## Data sources" in readme
    for name in ("pubmed_genia_abstracts.txt", "clinical_mtsamples_notes.txt", "scivocab_uncased.txt",
                 "FEDBIOBERT_DATA", "FEDBIOBERT_SHARED_DATA", "FEDBIOBERT_TORCH", "fedbiobert-run"):
        assert name in readme, name


def test_readme_commands_run_as_written_without_an_active_venv():
    """Every command in the README's code blocks names the venv's programs (.venv/bin/...) or a script
    that sets it up; training examples use the launcher."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    commands = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()
                if line.strip() and not line.lstrip().startswith("#")]  # comments are not commands
    assert len(commands) >= 6
    for command in commands:
        assert command.startswith((".venv/bin/", "bash scripts/")), command
        assert "torchrun" not in command, command
