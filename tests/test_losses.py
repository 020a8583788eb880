"Tests for medvision.losses: hand values, weights, gradients, perfect predictions and fastai integration."
import math
import pytest
import torch
import torch.nn.functional as F

from medvision.core import MedvisionError
from medvision.losses import SegLoss, DiceLoss, FocalLoss


def onehot_logits(y, n, scale=20.):
    return F.one_hot(y, n).movedim(-1, 1).float() * 2*scale - scale


def test_focal_and_ce_hand_values():
    x = torch.tensor([0., math.log(3)]).view(1, 2, 1, 1)     # p = (0.25, 0.75)
    y1, y0 = torch.ones(1, 1, 1, dtype=torch.long), torch.zeros(1, 1, 1, dtype=torch.long)
    assert FocalLoss(gamma=0)(x, y1).item() == pytest.approx(-math.log(0.75), abs=1e-6)
    assert FocalLoss(gamma=2)(x, y1).item() == pytest.approx(0.25**2 * -math.log(0.75), abs=1e-6)
    assert FocalLoss(gamma=2)(x, y0).item() == pytest.approx(0.75**2 * -math.log(0.25), abs=1e-6)
    assert FocalLoss(gamma=1.5)(x, y1).item() == pytest.approx(0.25**1.5 * -math.log(0.75), abs=1e-6)
    # two pixels, weights (1, 3): weighted mean (1*FL0 + 3*FL1)/(1+3)
    x2 = x.expand(1, 2, 1, 2); y2 = torch.tensor([[[0, 1]]])
    fl0, fl1 = 0.75**2 * -math.log(0.25), 0.25**2 * -math.log(0.75)
    assert FocalLoss(gamma=2, weight=[1., 3.])(x2, y2).item() == pytest.approx((fl0 + 3*fl1)/4, abs=1e-6)


def test_ce_matches_torch_with_weights():
    torch.manual_seed(0)
    x, y, w = torch.randn(3, 4, 6, 5), torch.randint(0, 4, (3, 6, 5)), torch.tensor([0.5, 1., 2., 4.])
    assert SegLoss(1, 0, 0)(x, y).item() == pytest.approx(F.cross_entropy(x, y).item(), abs=1e-6)
    assert SegLoss(1, 0, 0, weight=w)(x, y).item() == pytest.approx(F.cross_entropy(x, y, weight=w).item(), abs=1e-6)
    assert FocalLoss(0, weight=w)(x, y).item() == pytest.approx(F.cross_entropy(x, y, weight=w).item(), abs=1e-6)
    # weights change the loss
    assert SegLoss(1, 0, 0, weight=w)(x, y).item() != pytest.approx(SegLoss(1, 0, 0)(x, y).item(), abs=1e-4)


def test_dice_hand_values_and_smoothing():
    x = torch.tensor([0., math.log(3)]).view(1, 2, 1, 1).expand(1, 2, 1, 2)  # p = (0.25, 0.75) twice
    y = torch.tensor([[[1, 0]]])
    assert DiceLoss(smooth=0)(x, y).item() == pytest.approx(1 - (1/3 + 0.6)/2, abs=1e-6)
    assert DiceLoss(smooth=1)(x, y).item() == pytest.approx(1 - ((0.5+1)/(1.5+1) + (1.5+1)/(2.5+1))/2, abs=1e-6)
    # batch-level: the sums run over all images of the batch, not a mean of per-image Dice
    xb = torch.cat([x, x.flip(-1)]); yb = torch.cat([y, y])
    p = F.softmax(xb, 1); t = F.one_hot(yb, 2).movedim(-1, 1).float()
    dice = (2*(p*t).sum((0, 2, 3))) / (p.sum((0, 2, 3)) + t.sum((0, 2, 3)))
    assert DiceLoss(smooth=0)(xb, yb).item() == pytest.approx(1 - dice.mean().item(), abs=1e-6)
    # absent class: predicting it costs, not predicting it is ~free
    y0 = torch.zeros(1, 4, 4, dtype=torch.long)
    assert DiceLoss()(onehot_logits(y0, 3), y0).item() < 1e-6
    assert DiceLoss()(onehot_logits(torch.ones_like(y0), 3), y0).item() > 0.6


def test_perfect_prediction_is_low_and_wrong_is_high():
    torch.manual_seed(1)
    y = torch.randint(0, 4, (2, 16, 16))
    for loss in [SegLoss(), SegLoss(1, 0, 0), DiceLoss(), FocalLoss()]:
        good, bad = loss(onehot_logits(y, 4), y).item(), loss(onehot_logits((y+1) % 4, 4), y).item()
        assert good < 1e-5 and bad > 0.5


def test_segloss_is_weighted_sum_and_has_gradients():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 8, requires_grad=True); y = torch.randint(0, 3, (2, 8, 8))
    w = [1., 2., 0.5]
    loss = SegLoss(0.3, 0.5, 0.2, gamma=1.0, weight=w)(x, y)
    ref = 0.3*FocalLoss(0, w)(x, y) + 0.5*DiceLoss()(x, y) + 0.2*FocalLoss(1.0, w)(x, y)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # a gradient step lowers the loss
    x2 = (x - 5*x.grad).detach()
    assert SegLoss(0.3, 0.5, 0.2, gamma=1.0, weight=w)(x2, y).item() < loss.item()


def test_mask_forms_and_fastai_types():
    from fastai.torch_core import TensorImage, TensorMask
    torch.manual_seed(3)
    x, y = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    ref = SegLoss()(x, y)
    assert SegLoss()(x, y[:, None]).item() == pytest.approx(ref.item())           # (B,1,H,W)
    assert SegLoss()(x, y.to(torch.uint8)).item() == pytest.approx(ref.item())    # uint8 masks
    out = SegLoss()(TensorImage(x), TensorMask(y))
    assert type(out) is torch.Tensor and out.item() == pytest.approx(ref.item())
    assert SegLoss()(x.half(), y).dtype == torch.float32                          # AMP-safe


def test_errors():
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(MedvisionError, match='outputs 3 classes'): SegLoss()(x, torch.full((1, 4, 4), 255))
    with pytest.raises(MedvisionError, match='does not match logits'): SegLoss()(x, torch.zeros(1, 5, 4, dtype=torch.long))
    with pytest.raises(MedvisionError, match='2 class weights for 3 classes'): SegLoss(weight=[1, 2])(x, torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(MedvisionError, match='not all 0'): SegLoss(0, 0, 0)
    with pytest.raises(MedvisionError, match="reduction must be"): SegLoss(reduction='avg')


def test_reduction_none_per_image():
    torch.manual_seed(4)
    x, y = torch.randn(3, 3, 6, 6), torch.randint(0, 3, (3, 6, 6))
    per = SegLoss(reduction='none')(x, y)
    assert per.shape == (3,)
    for i in range(3):
        assert per[i].item() == pytest.approx(SegLoss()(x[i:i+1], y[i:i+1]).item(), abs=1e-5)
    assert SegLoss(reduction='sum')(x, y).item() == pytest.approx(per.sum().item(), abs=1e-5)


def test_activation_decodes_and_device_buffer():
    x = torch.randn(2, 4, 5, 5)
    l = SegLoss(weight=[1, 2, 3, 4])
    assert torch.allclose(l.activation(x).sum(1), torch.ones(2, 5, 5))
    assert torch.equal(l.decodes(x), x.argmax(1))
    assert 'weight' in dict(l.named_buffers())       # moves with .to(device)
    assert 'SegLoss(ce=0.25, dice=0.5, focal=0.25, gamma=2.0, weight=[1.0, 2.0, 3.0, 4.0]' in repr(l)


def test_fastai_learner_fit_and_get_preds():
    "SegLoss works as a fastai loss: fit, then get_preds with decoded masks and per-image losses."
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from fastai.torch_core import TensorImage, TensorMask
    from medvision.models import create_model
    torch.manual_seed(5)
    ds = [(TensorImage(torch.randn(1, 32, 32)), TensorMask(torch.randint(0, 3, (32, 32)))) for _ in range(4)]
    dls = DataLoaders.from_dsets(ds, ds, bs=2, device='cpu')
    learn = Learner(dls, create_model('unet-resnet18', n_in=1, n_out=3), loss_func=SegLoss())
    with learn.no_logging(): learn.fit(1, 1e-3)
    probs, targs, dec = learn.get_preds(with_decoded=True)
    assert probs.shape == (4, 3, 32, 32) and torch.allclose(probs.sum(1), torch.ones(4, 32, 32), atol=1e-5)
    assert dec.shape == (4, 32, 32) and torch.equal(dec, probs.argmax(1))
    _, _, losses = learn.get_preds(with_loss=True)
    assert losses.shape == (4,) and learn.loss_func.reduction == 'mean'
