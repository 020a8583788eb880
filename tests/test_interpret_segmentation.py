"Tests for medvision.interpret.segmentation: overlay colours, per-class table, saved PNGs, predict_dl, show_results."
import numpy as np
import pytest
import torch
from torch import nn
from PIL import Image

from medvision.core import MedvisionError
from medvision.interpret.segmentation import (OVERLAY_COLOURS, overlay, overlay_row, to_grey, plot_overlays, predict_dl,
                                              seg_report, save_overlays)


def _case():
    img = np.arange(64, dtype=np.float32).reshape(8, 8)
    targ = np.full((8, 8), 2); targ[1:4, 1:4] = 0; targ[5:7, 5:7] = 1
    pred = np.full((8, 8), 2); pred[2:5, 2:5] = 0; pred[5:7, 5:7] = 1
    return img, pred, targ


def test_overlay_colours_per_class():
    img, pred, targ = _case()
    o = overlay(img, pred, targ, cls=0, alpha=1.)
    assert o.dtype == np.uint8 and o.shape == (8, 8, 3)
    assert tuple(o[2, 2]) == OVERLAY_COLOURS['tp'] == (255, 255, 0)   # yellow
    assert tuple(o[4, 4]) == OVERLAY_COLOURS['fp'] == (255, 0, 0)     # red
    assert tuple(o[1, 1]) == OVERLAY_COLOURS['fn'] == (0, 255, 0)     # green
    assert o[0, 7, 0] == o[0, 7, 1] == o[0, 7, 2]                      # untouched pixel stays grey
    o1 = overlay(img, pred, targ, cls=1, alpha=1.)
    assert tuple(o1[5, 5]) == (255, 255, 0) and tuple(o1[2, 2]) != (255, 255, 0)
    half = overlay(img, pred, targ, cls=0, alpha=0.5)                   # blended with the grey value
    g = to_grey(img)[4, 4]
    assert tuple(half[4, 4]) == tuple(np.round(0.5*g + 0.5*np.array([255, 0, 0])).astype(np.uint8))


def test_overlay_shapes_and_errors():
    img, pred, targ = _case()
    stack = np.stack([img*0, img, img*0])                               # 2.5D: the middle channel is shown
    np.testing.assert_array_equal(overlay(stack, pred, targ, 0), overlay(img, pred, targ, 0))
    with pytest.raises(MedvisionError, match='differ'): overlay(img, pred[:4], targ, 0)
    row = overlay_row(img, pred, targ, ['a', 'b', 'bg'])                # default: all classes but the last
    assert row.shape == (8, 3*8 + 2*2, 3)


def test_seg_report_hand_computed():
    img, pred, targ = _case()
    from medvision.metrics import seg_confusion
    conf = seg_confusion(torch.tensor(pred)[None], torch.tensor(targ)[None], 3)
    tab, summ = seg_report(conf, ['lesion', 'lungs', 'background'], n_fg=1)
    # class 0: truth 9 px, pred 9 px, overlap 4 → dice 8/18, iou 4/14
    assert tab.loc['lesion', 'dice'] == pytest.approx(8/18) and tab.loc['lesion', 'iou'] == pytest.approx(4/14)
    assert tab.loc['lungs', 'dice'] == pytest.approx(1.0)
    assert summ['fg_dice'] == pytest.approx(8/18)
    bg_iou = tab.loc['background', 'iou']
    assert summ['miou'] == pytest.approx((4/14 + 1 + bg_iou)/3)


class _Thresh(nn.Module):
    def __init__(self): super().__init__(); self.w = nn.Parameter(torch.zeros(1))
    def forward(self, x): return torch.cat([x - 0.5, 0.5 - x], 1) + 0*self.w   # class 0 where bright


def test_predict_dl_accumulates_whole_set_and_saves(tmp_path):
    torch.manual_seed(0)
    xs = torch.rand(7, 1, 6, 6); ys = (xs[:, 0] <= 0.5).long()
    ys[:, 0, 0] = 1 - ys[:, 0, 0]                                        # one wrong pixel per image
    batches = [(xs[:4], ys[:4]), (xs[4:], ys[4:])]
    conf, (ims, pr, tg) = predict_dl(_Thresh(), batches, n_classes=2, keep=5)
    assert int(conf.sum()) == 7*36 and int(conf.trace()) == 7*35
    assert len(ims) == 5 and pr[4].shape == (6, 6)
    fs = save_overlays((ims, pr, tg), out=tmp_path, n=3, classes=['bright', 'dark'], cls=[0])
    assert [f.name for f in fs] == ['overlay_000.png', 'overlay_001.png', 'overlay_002.png']
    a = np.asarray(Image.open(fs[0]))
    assert a.shape == (6, 6*2 + 2, 3)
    with pytest.raises(MedvisionError, match='needs `classes`'): save_overlays((ims, pr, tg), out=tmp_path)


def test_plot_overlays_titles():
    import matplotlib; matplotlib.use('Agg')
    img, pred, targ = _case()
    fig = plot_overlays([img, img], [pred, pred], [targ, targ], ['lesion', 'lungs', 'bg'], n=2)
    assert len(fig.axes) == 2*3
    assert 'dice 0.44' in fig.axes[1].get_title()
