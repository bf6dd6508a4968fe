"""Neural Cleanse-style trigger recovery: the anomaly index, and the real thing on a sample."""
import pytest
import torch

from defenses.methods.trigger_recovery import MAD_CONSTANT, TriggerRecovery, TriggerRecoveryConfig, anomaly_index


def test_anomaly_index_is_the_scaled_distance_below_the_median():
    l1 = torch.tensor([10.0, 50.0, 52.0, 48.0, 54.0, 46.0])
    # median 49, absolute deviations [39, 1, 3, 1, 5, 3] -> MAD 3, scaled 3 * 1.4826
    expected = (49.0 - l1) / (3 * MAD_CONSTANT)
    assert torch.allclose(anomaly_index(l1), expected.double())
    assert float(anomaly_index(l1)[0]) == pytest.approx(39 / 4.4478, rel=1e-4)


def test_identical_masks_flag_nothing_and_do_not_divide_by_zero():
    index = anomaly_index(torch.full((10,), 7.0))
    assert torch.isfinite(index).all() and (index == 0).all()


@pytest.mark.slow
def test_recovery_flags_the_target_of_a_badnets_sample_and_finds_its_patch(mnist5k):
    from sample_models import load_sample

    sample = load_sample("cnn_badnets")
    # 100 Adam steps of batch 32 per label (the default is 300 of 128) keep this near a minute on
    # two CPU cores; run on the backdoored model itself, Neural Cleanse's original setting.
    rec = TriggerRecovery(TriggerRecoveryConfig(steps=100, batch_size=32)).run(
        sample.model, mnist5k.clean, original_model=sample.model)
    target = sample.entry["target"]
    assert rec.flagged == [target], (rec.l1, rec.anomaly)
    mask = rec.masks[rec.labels.index(target), 0]
    patch = sample.trigger.mask[0] > 0  # the true 4x4 patch: 16 of 784 pixels, 2% of the image
    inside = float(mask[patch].sum() / mask.sum())
    assert inside >= 0.2, inside  # ten times what a mask spread evenly would put there
    assert rec.asr_on_original[rec.labels.index(target)] >= 0.9, rec.asr_on_original
