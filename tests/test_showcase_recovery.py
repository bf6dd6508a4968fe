"""The trigger-recovery claim of the samples that record one: Neural Cleanse on RNP's unlearned
model flags the true target and its trigger flips the original model (docs/recovery.md). Apart from
test_showcase.py because it is the suite's longest test (about 3 minutes on 2 cores): in its own
file it runs on one worker while the defenses' claims run on the other."""
import pytest

from sample_models import catalog, recovery_claim
from sample_models.efficacy import measure_recovery, recovery_meets_bar

RECOVERY = [name for name, e in catalog().items() if recovery_claim(e)]


@pytest.mark.slow
@pytest.mark.parametrize("name", RECOVERY)
def test_trigger_recovered_on_the_unlearned_model_flips_the_original(name, mnist5k):
    """Neural Cleanse on RNP's unlearned model, every label, at the settings the catalog records
    (150 steps per label; the default is 300, docs/suite.md says why and what each gives): the true
    target is flagged and the trigger recovered for it flips at least half of the original model's
    clean images (bench/recovery.py, docs/recovery.md)."""
    entry = catalog()[name]
    recorded = recovery_claim(entry)
    got = measure_recovery(name, recorded["settings"], mnist5k)
    assert recovery_meets_bar(entry, got), got
    assert got["flagged"] == recorded["flagged"], (got, recorded)
    # Not bit for bit across machines, unlike the pruning claims: Neural Cleanse's Adam steps amplify
    # the last bits of the CPU's float kernels. At 300 steps per label the same code and weights on two
    # threads gave anomaly 4.35 and 87.8% on one machine, 4.00 and 88.3% on an AVX-512 machine, 4.08
    # and 87.4% there with its kernels capped at AVX2 (docs/recovery.md, finding 7): up to 8% of the
    # index apart. At the recorded 150 steps: 6.14 and 87.0% on the AVX-512 machine (the catalog's),
    # 5.62 and 87.4% capped at AVX2 (finding 8), 8.5% apart. The bar above and the flagged labels are
    # exact; the numbers must agree within that spread.
    assert got["asr_original"] == pytest.approx(recorded["asr_original"], abs=0.01), (got, recorded)
    assert got["anomaly"] == pytest.approx(recorded["anomaly"], rel=0.1), (got, recorded)
