"""The LDA loss applies the margins and weights the formulas of SPEC §5 say, and differs from CE."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from netmamba.config import ConfigError
from netmamba.train.loss import (
    CrossEntropyLoss,
    LDALoss,
    LossConfig,
    build_loss,
    class_balanced_weights,
    ldam_margins,
    logit_scale,
)
from train.lda_reference import hand_lda_loss

COUNTS = [1000, 100, 10]


def test_ldam_margins_scale_the_rarest_class_to_half():
    margins = ldam_margins(COUNTS, max_margin=0.5)
    # Delta_j ~ n_j^(-1/4), rarest (n = 10) gets 0.5: Delta_j = 0.5 * (10 / n_j)^(1/4)
    expected = [0.5 * (10 / 1000) ** 0.25, 0.5 * (10 / 100) ** 0.25, 0.5]
    assert margins.tolist() == pytest.approx(expected, rel=1e-6)
    assert margins.tolist() == pytest.approx([0.158114, 0.281171, 0.5], abs=1e-6)


def test_class_balanced_weights_follow_the_effective_number_and_sum_to_classes():
    weights = class_balanced_weights(COUNTS, beta=0.999)
    raw = [(1 - 0.999) / (1 - 0.999**n) for n in COUNTS]  # 0.0015815, 0.0105033, 0.1004508
    expected = [r * 3 / sum(raw) for r in raw]
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert weights.tolist() == pytest.approx([0.042160, 0.280000, 2.677839], abs=2e-6)
    assert float(weights.sum()) == pytest.approx(3.0, rel=1e-6)


def test_beta_zero_gives_equal_weights_and_equal_counts_equal_margins():
    assert class_balanced_weights(COUNTS, beta=0.0).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert ldam_margins([7, 7, 7, 7]).tolist() == pytest.approx([0.5] * 4)


def test_a_class_absent_from_training_gets_no_weight_and_no_margin():
    weights = class_balanced_weights([100, 0, 100], beta=0.999)
    assert weights.tolist() == pytest.approx([1.5, 0.0, 1.5])
    assert ldam_margins([100, 0, 1]).tolist() == pytest.approx([0.5 * 0.01**0.25, 0.0, 0.5])


LOGITS = [[0.30, 0.10, -0.20], [0.05, 0.02, 0.04], [-0.10, 0.20, 0.25], [0.40, -0.30, 0.10]]
LABELS = [0, 2, 1, 2]


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_lda_loss_value_matches_the_formula_by_hand(eps):
    loss = LDALoss(COUNTS, LossConfig(label_smoothing=eps))
    got = loss(torch.tensor(LOGITS), torch.tensor(LABELS))
    assert float(got) == pytest.approx(hand_lda_loss(LOGITS, LABELS, COUNTS, eps), rel=1e-5)


def test_lda_loss_agrees_with_pytorch_weighted_cross_entropy_of_shifted_logits():
    logits = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(1))
    loss = LDALoss(COUNTS, LossConfig(label_smoothing=0.0))
    margins, weights = ldam_margins(COUNTS), class_balanced_weights(COUNTS)
    shifted = logits - F.one_hot(labels, 3) * margins[labels][:, None]
    reference = F.cross_entropy(30.0 * shifted, labels, weight=weights)
    assert float(loss(logits, labels)) == pytest.approx(float(reference), rel=1e-5)


def test_lda_loss_differs_from_cross_entropy_and_reduces_to_it_without_margins_and_weights():
    logits, labels = torch.tensor(LOGITS), torch.tensor(LABELS)
    ce = float(CrossEntropyLoss(0.1)(logits, labels))
    assert ce == pytest.approx(float(F.cross_entropy(logits, labels, label_smoothing=0.1)))
    lda = float(LDALoss(COUNTS, LossConfig())(logits, labels))
    assert abs(lda - ce) > 0.1
    # margins, weights and the scale are what make the difference: without them it is CE
    plain = LDALoss(COUNTS, LossConfig(margins=False, reweight=False, scale=1.0))
    assert float(plain(logits, labels)) == pytest.approx(ce, rel=1e-6)
    # each ingredient changes the value on its own
    no_margin = float(LDALoss(COUNTS, LossConfig(margins=False))(logits, labels))
    no_weight = float(LDALoss(COUNTS, LossConfig(reweight=False))(logits, labels))
    assert len({round(v, 6) for v in (lda, no_margin, no_weight)}) == 3


def test_deferred_reweighting_switches_the_weights_on_at_the_given_epoch():
    logits, labels = torch.tensor(LOGITS), torch.tensor(LABELS)
    loss = LDALoss(COUNTS, LossConfig(label_smoothing=0.0, reweight_from_epoch=2))
    unweighted = hand_lda_loss(LOGITS, LABELS, COUNTS, 0.0, weighted=False)
    weighted = hand_lda_loss(LOGITS, LABELS, COUNTS, 0.0, weighted=True)
    for epoch, expected, active in [
        (0, unweighted, False),
        (1, unweighted, False),
        (2, weighted, True),
        (5, weighted, True),
    ]:
        loss.set_epoch(epoch)
        assert loss.weights_active is active
        assert float(loss(logits, labels)) == pytest.approx(expected, rel=1e-5)


def test_unlabelled_flows_are_left_out_and_an_all_unlabelled_batch_gives_zero():
    logits = torch.tensor(LOGITS, requires_grad=True)
    loss = LDALoss(COUNTS, LossConfig())
    with_unlabelled = loss(logits, torch.tensor([0, -1, 1, -1]))
    only_labelled = loss(logits[[0, 2]], torch.tensor([0, 1]))
    assert float(with_unlabelled.detach()) == pytest.approx(float(only_labelled.detach()))
    empty = loss(logits, torch.full((4,), -1))
    empty.backward()
    assert float(empty.detach()) == 0.0 and logits.grad is not None


def test_lda_gradient_pushes_the_rare_true_class_harder():
    # Same logits, one flow of the rarest and one of the commonest class: the margin and the
    # weight make the rare flow's gradient on its true logit larger.
    logits = torch.zeros(2, 3, requires_grad=True)
    LDALoss(COUNTS, LossConfig(label_smoothing=0.0))(logits, torch.tensor([2, 0])).backward()
    assert -logits.grad[0, 2] > -logits.grad[1, 0] * 10


def test_bad_inputs_raise_clear_errors():
    loss = LDALoss(COUNTS, LossConfig())
    with pytest.raises(ValueError, match="built for 3"):
        loss(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.2"):
        loss(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="class_counts"):
        LDALoss([0, 0], LossConfig())
    with pytest.raises(ValueError, match="needs class_counts"):
        build_loss(LossConfig(kind="lda"))
    with pytest.raises(ConfigError, match="kind"):
        LossConfig(kind="focal")


def test_build_loss_and_config_round_trip():
    config = LossConfig(reweight_from_epoch=60, label_smoothing=0.05)
    assert LossConfig.from_json(config.to_json()) == config
    assert isinstance(build_loss(LossConfig(kind="ce")), CrossEntropyLoss)
    lda = build_loss(config, COUNTS)
    record = lda.describe()
    assert record["margins"][2] == 0.5 and record["class_counts"] == COUNTS
    assert record["weights_active"] is False


def test_cross_entropy_on_a_cosine_head_is_scaled_by_s():
    cosines = torch.tensor([[0.9, -0.2, 0.1], [0.3, 0.2, -0.5]])
    labels = torch.tensor([0, 2])
    config = LossConfig(kind="ce", scale=16.0, label_smoothing=0.1)
    loss = build_loss(config, head="cosine")
    want = F.cross_entropy(16.0 * cosines, labels, label_smoothing=0.1)
    torch.testing.assert_close(loss(cosines, labels), want)
    # by hand for the second flow without smoothing: -log softmax(16 x cos)[2]
    z = [16 * 0.3, 16 * 0.2, 16 * -0.5]
    by_hand = -(z[2] - math.log(sum(math.exp(v) for v in z)))  # about 13.3
    plain = build_loss(LossConfig(kind="ce", scale=16.0, label_smoothing=0.0), head="cosine")
    assert plain(cosines[1:], labels[1:]).item() == pytest.approx(by_hand, rel=1e-6)
    # a linear head's logits are not scaled
    linear = build_loss(config)
    torch.testing.assert_close(
        linear(cosines, labels), F.cross_entropy(cosines, labels, label_smoothing=0.1)
    )
    assert loss.describe()["scale"] == 16.0 and linear.describe()["scale"] == 1.0


def test_logit_scale_is_s_for_lda_and_for_any_cosine_head():
    assert logit_scale(LossConfig(kind="lda", scale=30.0), "linear") == 30.0
    assert logit_scale(LossConfig(kind="lda", scale=30.0), "cosine") == 30.0
    assert logit_scale(LossConfig(kind="ce", scale=30.0), "cosine") == 30.0
    assert logit_scale(LossConfig(kind="ce", scale=30.0), "linear") == 1.0
