"""CLI: help, tables, config printing, and one-line errors with exit status 2."""

import subprocess
import sys

import pytest
import yaml

from slas.cli import main


def test_help_and_no_command(capsys):
    assert main([]) == 0
    assert "config" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0


def test_ls_prints_every_table(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for word in (
        "advantages",
        "grpo",
        "mean_only",
        "global_std",
        "slas",
        "rewards",
        "backbones",
        "world_slas",
    ):
        assert word in out


def test_config_prints_resolved_yaml(capsys):
    assert main(["config", "world_grpo", "train.lr=3e-4", "sample.group_size=4"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["advantage"]["estimator"] == "grpo"
    assert data["train"]["lr"] == 3e-4 and data["sample"]["group_size"] == 4


def test_config_without_preset_takes_overrides(capsys):
    assert main(["config", "advantage.gamma=2"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["advantage"]["gamma"] == 2.0


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["config", "train.lrr=1"], "did you mean lr"),
        (["config", "sample.group_size=1"], "must be >= 2"),
        (["config", "missing.yaml"], "not found"),
        (["config", "advantage.gamma=abc"], "expected float"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_console_script_has_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "slas.cli", "config", "train.nope=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "unknown field in [train] 'nope'" in proc.stderr


def test_walkthrough_numbers(capsys):
    main(["walkthrough"])
    out = capsys.readouterr().out
    assert "exactly: 240 of 240" in out  # 24 samples x 10 steps, every first ratio is 1
    rows = {
        line.split()[0]: [float(v) for v in line.split()[1:]]
        for line in out.splitlines()
        if line.strip().startswith(("grpo ", "slas ")) and len(line.split()) == 6
    }
    for name in ("grpo", "slas"):
        assert rows[name][-1] > rows[name][0] + 0.5  # the toy policy learns under both
