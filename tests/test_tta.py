"Tests for medvision.tta: TTA on flip-symmetric input equals no TTA, masks are un-flipped, ensembles average probabilities."
import pytest
import torch
from torch import nn

from medvision.core import MedvisionError
from medvision.tta import FlipTTA, ProbEnsemble, tta_flips


def _clf():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4*6*6, 3)).eval()


@torch.no_grad()
def test_tta_on_flip_symmetric_input_equals_no_tta():
    m = _clf()
    x = torch.randn(3, 1, 8, 8)
    xs = x + x.flip(-1) + x.flip(-2) + x.flip(-1, -2)             # symmetric under h, v and hv
    for fl in (('h',), ('v',), ('h', 'v', 'hv')):
        torch.testing.assert_close(FlipTTA(m, fl)(xs).softmax(1), m(xs).softmax(1), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(FlipTTA(m, ('h',))(x).softmax(1), m(x).softmax(1), atol=1e-4)


@torch.no_grad()
def test_segmentation_masks_are_unflipped():
    torch.manual_seed(1)
    seg = nn.Conv2d(1, 3, 1)                                       # mirror-equivariant: TTA must give its output back
    x = torch.randn(2, 1, 7, 9)                                    # not symmetric
    out = FlipTTA(seg, tta_flips(True, 'segmentation'))(x)
    torch.testing.assert_close(out.softmax(1), seg(x).softmax(1), atol=1e-6, rtol=1e-5)
    wrong = torch.stack([seg(x).softmax(1), seg(x.flip(-1)).softmax(1)]).mean(0)   # forgetting the un-flip
    assert not torch.allclose(out.softmax(1), wrong, atol=1e-4)


@torch.no_grad()
def test_ensemble_of_identical_models_equals_one():
    m, x = _clf(), torch.randn(4, 1, 8, 8)
    for k in (1, 2, 5):
        torch.testing.assert_close(ProbEnsemble([m]*k)(x).softmax(1), m(x).softmax(1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.sigmoid(ProbEnsemble([m]*3, multi_label=True)(x)), torch.sigmoid(m(x)), atol=1e-5, rtol=1e-5)
    a, b = _clf(), nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    torch.testing.assert_close(ProbEnsemble([a, b])(x).exp(), (a(x).softmax(1) + b(x).softmax(1))/2, atol=1e-6, rtol=1e-5)


def test_flip_names():
    assert tta_flips(True) == ('h',) and tta_flips(True, 'segmentation') == ('h', 'v', 'hv')
    assert tta_flips('h, v') == ('h', 'v') and tta_flips(None) == ()
    with pytest.raises(MedvisionError, match='unknown TTA flip'): tta_flips('x')
    with pytest.raises(MedvisionError, match='norms'): ProbEnsemble([_clf()], norms=[(1., 0.), (1., 0.)])
