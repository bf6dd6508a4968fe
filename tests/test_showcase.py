"""The showcase samples: each defense the catalog says works on a sample removes its backdoor there
(ASR <= 2% with test ACC within 2 points), re-measured from the committed weights at the settings
the catalog records (``python -m sample_models.efficacy`` wrote them; docs/study.md is the study
the samples were chosen from). Runs are deterministic on the suite's two threads, so the
catalog's numbers are reproduced as well."""
import pytest

from sample_models import catalog, recovery_claim
from sample_models.efficacy import measure, meets_bar, recovery_meets_bar

CLAIMS = [(name, defense, cut) for name, e in catalog().items()
          for defense, cut in e.get("works", {}).items()]


RECOVERY = [name for name, e in catalog().items() if recovery_claim(e)]


def _works():
    return {(e["attack"], d) for e in catalog().values() for d in e.get("works", {})}


def test_the_zoo_has_a_showcase_a_hard_case_and_a_control():
    cat = catalog()
    assert {"showcase", "hard case", "control"} <= {e.get("role") for e in cat.values()}
    assert ("badnets", "anp") in _works() and ("blend", "anp") in _works()
    assert any(d == "rnp" for _, d in _works()) and any(d == "holder" for _, d in _works())
    assert cat["cnn_badnets"]["role"] == "hard case"  # today's corner sample, kept for teaching
    # trigger recovery on RNP's unlearned model finds the attacker's trigger on at least one sample
    assert any(recovery_meets_bar(cat[n], recovery_claim(cat[n])) for n in RECOVERY)
    for e in cat.values():
        if e.get("role") in ("hard case", "showcase", "control"):
            assert e.get("why"), e["name"]  # the catalog says why the defenses work or fail there
        for defense in e.get("works", {}):
            assert defense in e["efficacy"], (e["name"], defense)
            assert meets_bar(e, e["efficacy"][defense][e["works"][defense]]), e["name"]
        if e.get("role") == "showcase":
            assert "clp" in e["efficacy"], e["name"]  # CLP, the data-free baseline, measured on every showcase
        if e.get("role") == "hard case":
            assert not e.get("works"), e["name"]


@pytest.mark.slow
@pytest.mark.parametrize("name,defense,cut", CLAIMS, ids=[f"{n}-{d}" for n, d, _ in CLAIMS])
def test_defense_removes_the_backdoor_of_its_showcase(name, defense, cut, mnist5k):
    entry = catalog()[name]
    recorded = entry["efficacy"][defense]
    got = measure(name, defense, recorded["settings"], mnist5k)
    c = got[cut]
    assert meets_bar(entry, c), (name, defense, cut, got)
    assert c["pruned"] == recorded[cut]["pruned"], (got, recorded)
    assert c["acc"] == pytest.approx(recorded[cut]["acc"], abs=0.005), (got, recorded)
    assert c["asr"] == pytest.approx(recorded[cut]["asr"], abs=0.005), (got, recorded)
