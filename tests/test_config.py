"""prefdata.config: YAML and `--set` values nested too deep for the parser are one `error:` line naming
the file or the key (issue 24), for pipelines and trainer configs alike."""

from __future__ import annotations

import yaml

from prefdata.testing import run_cli as cli  # (exit code, stdout, stderr)


def one_error_line(code: int, err: str) -> str:
    assert code == 1 and "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


# ----------------------------------------------------------------------------- nesting too deep


DEEP = "[" * 20000 + "]" * 20000


def test_yaml_nested_too_deep_is_one_line_naming_the_file(tmp_path, capsys):
    p = tmp_path / "deep.yaml"
    p.write_text(f"name: x\nsteps: {DEEP}\n")
    code, _, err = cli(capsys, "run", p)
    line = one_error_line(code, err)
    assert str(p) in line and "nested too deeply" in line and "internal error" not in line, line
    assert len(line) < 400


def test_yaml_nested_too_deep_in_block_style_is_one_line(tmp_path, capsys):
    p = tmp_path / "deep-block.yaml"
    p.write_text("name: x\nsteps:\n" + "".join("  " * i + "- \n" for i in range(1, 3000)) + "  " * 3000 + "- 1\n")
    code, _, err = cli(capsys, "run", p)
    line = one_error_line(code, err)
    assert str(p) in line and "nested too deeply" in line, line


def test_set_nested_too_deep_is_one_line_naming_the_key(tmp_path, capsys):
    p = tmp_path / "ok.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "steps": [{"name": "s", "uses": "rlcd",
                                                           "input": "builtin:quickstart_prompts"}]}))
    code, _, err = cli(capsys, "run", p, "--set", f"steps.s.config.x={DEEP}")
    line = one_error_line(code, err)
    assert "--set steps.s.config.x" in line and "nested too deeply" in line and "internal error" not in line, line
    assert DEEP[:100] not in line


def test_trainer_config_nested_too_deep_is_one_line(tmp_path, capsys):
    p = tmp_path / "train.yaml"
    p.write_text(f"beta: {DEEP}\n")
    code, _, err = cli(capsys, "train", "dpo", "--dataset", "nothing@v1", "--config", p)
    line = one_error_line(code, err)
    assert str(p) in line and "nested too deeply" in line and "internal error" not in line, line
