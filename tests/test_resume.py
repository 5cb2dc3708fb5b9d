"""The resume contract: the run folder's config is the truth; a change is refused unless asked for, and then
recorded; raising the round budget continues a stopped run."""

import json

import pytest

from iterdpo.__main__ import main
from iterdpo.config import load_preset
from iterdpo.folder import write_json
from iterdpo.resume import resume
from iterdpo.runfolder import RunFolder


@pytest.fixture
def started(tmp_path):
    """A run folder that holds only its config (what a run writes before its first stage)."""
    cfg = load_preset("tiny", {"out": str(tmp_path / "run"), "rounds": 2})
    RunFolder(cfg.out).root.mkdir(parents=True)
    write_json(RunFolder(cfg.out).config_path, cfg.to_dict())
    return cfg


def test_a_changed_value_is_refused_naming_each_field(started, capsys):
    before = RunFolder(started.out).config_path.read_text()
    code = main(["run", "--out", started.out, "--resume", "--engine", "python", "--set", "toy.label_noise=0.1",
                 "--set", "generation.k=4", "--set", "dpo.beta=0.5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    for fragment in ("toy.label_noise: run has 0.4, asked 0.1", "generation.k: run has 8, asked 4",
                     "dpo.beta: run has 0.2, asked 0.5", "--allow-change"):
        assert fragment in err
    assert RunFolder(started.out).config_path.read_text() == before  # nothing was changed


def test_an_allowed_change_is_applied_and_recorded(started):
    run = RunFolder(started.out)
    cfg = resume(run, started.replace(**{"dpo.beta": 0.5}), allow_change=True)
    assert cfg.dpo.beta == 0.5 and run.config().dpo.beta == 0.5  # the stages still to run use it
    (event,) = run.events()
    assert event["event"] == "config_change" and event["changes"] == {"dpo.beta": [0.2, 0.5]}
    assert run.decisions() == {}  # an event is not a round's decision


def test_resume_of_a_folder_without_a_run_is_refused(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "nothing"), "--resume", "--engine", "python"]) == 2
    assert "holds no run" in capsys.readouterr().err


@pytest.mark.integration
def test_raising_the_rounds_continues_a_stopped_run(tiny_run, capsys):
    cfg, summary = tiny_run("more", rounds=1, baseline__offline_dpo=False)
    run = RunFolder(cfg.out)
    assert run.decisions()[1]["stop"] and run.decisions()[1]["stop_reason"] == "round_budget"
    assert main(["run", "--out", cfg.out, "--resume", "--rounds", "2", "--engine", "python"]) == 0
    out = capsys.readouterr().out
    assert "continues with round 2" in out
    assert sorted(run.decisions()) == [1, 2]
    s = run.summary()
    assert [r["round"] for r in s["rounds"]] == [0, 1, 2] and s["rounds"][1] == summary["rounds"][1]
    assert s["config_changes"][0]["rounds"] == [1, 2]
    assert json.loads(run.config_path.read_text())["rounds"] == 2
