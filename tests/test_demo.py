"""The Defend page's demo budgets, run as the page runs them (a run folder and the worker's own
code) on the showcase sample: each shows the backdoor going at the defense's own cut, and the
numbers the page quotes are the ones this run gives (bench/demo.py measured them; docs/demo.md)."""
import time

import pytest

from defenses.base import all_defenses
from defenses.runs.folder import RunRequest, create_run, read_json
from defenses.runs.worker import execute

SHOWCASE = "cnn_badnets_centre"
DEMOS = [n for n, i in all_defenses().items() if i.demo]
# ANP's demo meets the showcase bar; RNP's removes most of the backdoor, as its note says.
ASR_AT_MOST = {"anp": 0.02, "rnp": 0.10}


def test_the_data_driven_defenses_have_a_demo():
    assert {"anp", "rnp"} <= set(DEMOS)
    for name, info in all_defenses().items():
        assert info.demo_note, name  # every defense says what its first click will show


@pytest.mark.slow
@pytest.mark.parametrize("name", DEMOS)
def test_demo_budget_shows_the_backdoor_going_on_the_showcase(name, tmp_path):
    info = all_defenses()[name]
    request = RunRequest(defense=name, params=dict(info.demo), model={"sample": SHOWCASE},
                         data={"dataset": "mnist5k", "clean_count": 500, "seed": 0}, recover_triggers=False)
    run_dir = create_run(request, tmp_path)
    t0 = time.perf_counter()
    assert execute(run_dir) == "done"
    seconds = time.perf_counter() - t0
    res = read_json(run_dir / "result.json")
    base, cut = res["baseline"], res["default"]
    assert base["asr"] > 0.9
    assert cut["asr"] <= ASR_AT_MOST[name] and cut["acc"] >= base["acc"] - 0.02, cut
    # the page quotes these very numbers
    assert f"prune {cut['n_pruned']} neurons there" in info.demo_note, (cut, info.demo_note)
    assert f"ACC {100 * cut['acc']:.1f}%, ASR {100 * cut['asr']:.1f}%" in info.demo_note, (cut, info.demo_note)
    print(f"\n{name} demo run on {SHOWCASE}, start to finish (defense, probes and sweeps): {seconds:.0f} s")
