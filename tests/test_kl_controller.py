import json
import math

import pytest

from trl_ib.trainer.kl_controller import KLController


def test_update_moves_alpha_by_rate_times_log_ratio():
    controller = KLController(alpha=0.2, ce_weight=0.2 * 0.01, target=0.1, rate=0.05)
    # KL twice the target: log(2) = 0.693 is inside the clip, alpha grows by exp(0.05 * 0.693) = 2 ** 0.05.
    assert controller.update(0.2) == pytest.approx(0.2 * 2**0.05, rel=1e-12)
    # KL half the target: back down by the same factor, exactly where it started.
    assert controller.update(0.05) == pytest.approx(0.2, rel=1e-12)
    assert controller.alpha == pytest.approx(0.2, rel=1e-12)


def test_update_clips_the_error_to_one():
    controller = KLController(alpha=1.0, ce_weight=0.5, target=0.1, rate=0.5)
    # log(100) = 4.6 is clipped to 1: alpha *= exp(0.5), not exp(2.3).
    assert controller.update(10.0) == pytest.approx(math.exp(0.5), rel=1e-12)
    # log(1e-4) is clipped to -1.
    assert controller.update(1e-5) == pytest.approx(1.0, rel=1e-12)
    # KL == 0 must not raise (log of 0); it is the largest step down.
    assert controller.update(0.0) == pytest.approx(math.exp(-0.5), rel=1e-12)


def test_kl_at_target_leaves_alpha_unchanged():
    controller = KLController(alpha=0.3, ce_weight=0.003, target=0.02, rate=0.1)
    assert controller.update(0.02) == pytest.approx(0.3, rel=1e-12)


def test_ce_weight_alpha_times_beta_is_held_fixed():
    controller = KLController(alpha=0.2, ce_weight=0.2 * 0.01, target=0.1, rate=0.2)
    assert controller.beta == pytest.approx(0.01, rel=1e-12)
    betas = []
    for kl in (0.5, 0.3, 0.2, 0.01, 0.05):
        controller.update(kl)
        betas.append(controller.beta)
        assert controller.alpha * controller.beta == pytest.approx(0.002, rel=1e-12)
    # beta moves opposite to alpha: the first three updates raise alpha, so beta falls.
    assert betas[0] < 0.01 and betas[2] < betas[1] < betas[0]


def test_state_dict_round_trip_through_json():
    controller = KLController(alpha=0.2, ce_weight=0.002, target=0.1, rate=0.05)
    for kl in (0.4, 0.3, 0.05):
        controller.update(kl)
    state = json.loads(json.dumps(controller.state_dict()))
    assert set(state) == {"alpha", "ce_weight", "target", "rate"}
    restored = KLController(**state)
    assert restored == controller
    # The restored controller continues exactly where the original would.
    assert restored.update(0.7) == controller.update(0.7)
