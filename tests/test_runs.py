"""Run folders: new every time, never overwritten, and only 'complete' when finished."""

from __future__ import annotations

import pytest

from petlab.runs import RunExistsError, create_run, list_runs, open_run


def test_each_run_gets_a_new_folder(tmp_path):
    a, b = create_run(root=tmp_path), create_run(root=tmp_path)
    assert a.path != b.path and a.path.parent == b.path.parent == tmp_path.resolve()
    assert a.status() == "running"


def test_existing_folder_is_never_overwritten(tmp_path):
    target = tmp_path / "x"
    run = create_run(path=target)
    run.write_json("metrics.json", {"a": 1})
    with pytest.raises(RunExistsError, match="never overwritten"):
        create_run(path=target)
    assert run.read_json("metrics.json") == {"a": 1}


def test_status_lifecycle_and_atomic_files(tmp_path):
    run = create_run(root=tmp_path)
    run.write_text("report.html", "<p>x</p>")
    run.mark_failed("boom")
    assert run.status() == "failed" and run.read_json("status.json")["error"] == "boom"
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]
    opened = open_run(run.path)
    opened.finish()  # not the owner: leaves status alone
    assert opened.status() == "failed"
    assert list_runs(tmp_path)[0]["status"] == "failed"
    with pytest.raises(FileNotFoundError, match="not a petlab run folder"):
        open_run(tmp_path / "nope")
