"""CLI start-up: ``prunetune --help`` loads no heavy library, lists every command, and the
command modules import on their own (no cycle through ``prunetune.search.cli``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from prunetune.search.cli import app

# Not pydantic: typer itself imports it to coerce a command's parameters.
HEAVY = ("torch", "ray", "mlflow", "optuna", "pandas", "prunetune.prune")
COMMANDS = (
    "train",
    "search",
    "methods",
    "pareto",
    "register",
    "fetch",
    "models",
    "ui",
    "explain",
    "data",
)


def _loaded_heavy(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the heavy modules it left in ``sys.modules``."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_cli_loads_no_heavy_library():
    assert _loaded_heavy("import prunetune.search.cli") == []


@pytest.mark.parametrize("args", [["--help"], ["search", "--help"], ["explain", "--help"]])
def test_help_loads_no_heavy_library(args):
    # --help builds every command's options from its annotations; none may need torch & co.
    code = (
        "from typer.testing import CliRunner\n"
        "from prunetune.search.cli import app\n"
        f"assert CliRunner().invoke(app, {args!r}).exit_code == 0\n"
    )
    assert _loaded_heavy(code) == []


def test_search_package_reexports_load_trial_lazily():
    assert _loaded_heavy("import prunetune.search") == []
    code = (
        "import prunetune.search.trial as trial\n"
        "from prunetune.search import TrialConfig, TrialResult, parse_config, run_trial\n"
        "assert (TrialConfig, TrialResult, parse_config, run_trial) == "
        "(trial.TrialConfig, trial.TrialResult, trial.parse_config, trial.run_trial)\n"
    )
    assert "torch" in _loaded_heavy(code)


def test_unknown_attribute_of_the_search_package_is_an_attribute_error():
    import prunetune.search

    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        prunetune.search.no_such_name  # noqa: B018


@pytest.mark.parametrize("module", ["cli_tracking", "cli_explain", "cli_data"])
def test_command_modules_import_without_the_root_cli(module):
    code = (
        f"import prunetune.search.{module} as m, sys\n"
        "assert 'prunetune.search.cli' not in sys.modules, 'imports the root cli back'\n"
        "assert m.app.registered_commands or m.app.registered_groups\n"
    )
    assert _loaded_heavy(code) == []


def test_help_lists_every_command_in_order():
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    listed = [
        line.split()[1]
        for line in result.output.splitlines()
        if line.startswith("│ ") and len(line.split()) > 1 and line.split()[1] in COMMANDS
    ]
    assert listed == list(COMMANDS)
