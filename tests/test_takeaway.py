"""What a user takes away besides the model: the `iterdpo` command, and a recipe file that holds only what applies."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from iterdpo.__main__ import main
from iterdpo.config import PRESET_DIR, SECTIONS, load_preset

ROOT = Path(__file__).resolve().parents[1]
WORLD_SECTIONS = {"toy", "sentiment"}  # the config sections that belong to one world (data.source)


def test_the_iterdpo_command_is_declared_and_runs() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["iterdpo"]
    assert script == "iterdpo.__main__:main"
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    exe = Path(sys.executable).parent / "iterdpo"
    if not exe.exists():
        pytest.skip(f"{exe} is not installed: pip install -e . installs it")
    done = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "run" in done.stdout and "show" in done.stdout, done.stderr[-2000:]
    bad = subprocess.run([str(exe), "show", "--preset", "no-such-preset"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not found" in bad.stderr  # main's exit status reaches the shell


def _show(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["show", *argv]) == 0
    return out.getvalue()


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_a_dumped_recipe_holds_its_worlds_section_only_and_loads_back_the_same(preset, tmp_path: Path) -> None:
    text = _show("--preset", preset)
    dumped = yaml.safe_load(text)
    cfg = load_preset(preset, {"out": dumped["out"]})
    assert set(dumped) & WORLD_SECTIONS == WORLD_SECTIONS & {cfg.data.source}
    assert set(dumped) >= set(SECTIONS) - WORLD_SECTIONS
    recipe = tmp_path / "my.yaml"
    recipe.write_text(text)
    assert load_preset(str(recipe)).to_dict() == cfg.to_dict()  # a missing world section is its defaults
    again = _show("--preset", str(recipe))
    assert again == text


def test_a_recipe_keeps_set_overrides(tmp_path: Path) -> None:
    recipe = tmp_path / "my.yaml"
    recipe.write_text(_show("--preset", "tiny", "--set", "dpo.beta=0.25", "--set", "toy.layers=3"))
    cfg = load_preset(str(recipe))
    assert cfg.dpo.beta == 0.25 and cfg.toy.layers == 3 and cfg.preset == "tiny"
