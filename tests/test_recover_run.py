"""Trigger recovery for a run that finished without it: started from the Triggers page, in a
process of its own, into the run's folder; the run stays finished; the process is reaped."""
import os
import time
from pathlib import Path

import pytest
from test_dashboard_app import app, make_run, no_exception, wait_until_final

from defenses.runs.recover_run import recovery_state, recovery_subjects, start_recovery
from defenses.runs.folder import read_status, write_json

RUN = "20260101-000000-anp-cnn_badnets-aaaa"
QUICK = {"steps": 10, "batch_size": 16}


def test_refused_in_one_sentence_where_it_cannot_run(runs):
    run = make_run(runs, RUN, triggers=False)
    assert recovery_subjects(run) == ["original"]  # an ANP run keeps no unlearned model
    with pytest.raises(ValueError, match="kept no unlearned model"):
        start_recovery(run, "unlearned", QUICK)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        start_recovery(run, "original", {"steps": 0})
    write_json(run / "status.json", {"state": "running", "pid": os.getpid()})
    with pytest.raises(ValueError, match="has not finished"):
        start_recovery(run, "original", QUICK)
    assert not (run / "triggers").exists()  # nothing started


def test_the_triggers_page_recovers_an_existing_run(runs):
    run = make_run(runs, RUN, triggers=False)
    at = app().run()
    at.switch_page("views/triggers.py").run()
    no_exception(at, "triggers")
    assert any("Recover them for a finished run here" in i.value for i in at.info)
    at.number_input(key="recover_run_steps").set_value(10)
    at.number_input(key="recover_run_batch").set_value(16)
    at.button(key="recover_run_start").click().run()
    no_exception(at, "triggers, started")
    pid = recovery_state(run)["pid"]
    job = wait_until_final(run, 300, read=recovery_state)
    assert job["state"] == "done", job
    assert (run / "triggers" / "recovery.json").exists() and read_status(run)["state"] == "done"
    at.run()
    no_exception(at, "triggers, recovered")
    assert at.selectbox(key="triggers_run").value == RUN
    assert "trigger_grid" in [c.key for c in at.get("plotly_chart")]
    assert any("Recovered on the original model" in c.value for c in at.caption)
    # the finished process is reaped, not left a zombie of the server (here: of the test)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists(), "the recovery process was left a zombie"
