"Tests for medvision.models: the registry, every registered model's output shape, splitters and offline weights."
import tempfile, time, warnings
import pytest
import torch
from torch import nn

from medvision.core import MedvisionError
from medvision.models import create_model, list_models, model_info, register_model, _hub_reachable

SEG = ['unet-effb2', 'unet-effb3', 'unet-efflite0', 'unet-resnet18', 'unet-resnet34', 'unetpp-effb2', 'unetpp-effb3',
       'unetpp-efflite0', 'unetpp-resnet34', 'unetpp-timm-effb3']
CLS = ['chestct-cnn', 'densenet121', 'efficientnet_b0', 'efficientnet_b1', 'efficientnet_b2', 'efficientnet_b3',
       'inception_v3', 'mri-cnn', 'resnet18', 'resnet50', 'seed002-cnn', 'seed003-cnn', 'tf_efficientnet_lite0',
       'tf_efficientnet_lite1', 'tf_efficientnet_lite2', 'tv-inception3', 'tv-resnet50']


def test_registry_lists():
    assert list_models('segmentation') == SEG
    assert list_models('classification') == CLS
    assert list_models() == sorted(SEG + CLS)
    for n in SEG + CLS:
        info = model_info(n)
        assert info['name'] == n and info['task'] in ('segmentation', 'classification')
        assert callable(info['splitter']) and info['default_size'] >= info['min_size']
    assert model_info('unetpp-effb2')['default_size'] == 512  # seed 001
    assert model_info('unetpp-effb3')['default_size'] == 384  # seed 004
    assert model_info('inception_v3')['min_size'] == 75


def test_unknown_name_lists_valid_and_close():
    with pytest.raises(MedvisionError) as e: create_model('unetpp-effb4')
    msg = str(e.value)
    assert "unknown model 'unetpp-effb4'" in msg and "Did you mean" in msg and "'unetpp-effb3'" in msg
    assert all(n in msg for n in SEG + CLS)
    with pytest.raises(MedvisionError, match="Valid names"): model_info('nonsense-xyz')
    with pytest.raises(MedvisionError, match="task must be one of"): list_models('detection')


@pytest.mark.parametrize('bad', [dict(n_in=0), dict(n_out=0), dict(n_in=1.5), dict(dropout=1.0), dict(dropout=-0.1)])
def test_bad_arguments(bad):
    with pytest.raises(MedvisionError): create_model('mri-cnn', **bad)


@pytest.mark.parametrize('name', SEG)
@pytest.mark.parametrize('n_in', [1, 3])
def test_segmentation_shapes_and_split(name, n_in):
    m = create_model(name, n_in=n_in, n_out=4).eval()
    with torch.no_grad(): y = m(torch.randn(1, n_in, 64, 64))
    assert y.shape == (1, 4, 64, 64)
    groups = model_info(name)['splitter'](m)
    assert len(groups) == 2
    assert sum(len(g) for g in groups) == len(list(m.parameters()))
    enc = {id(p) for p in m.encoder.parameters()}
    assert {id(p) for p in groups[0]} == enc and not enc & {id(p) for p in groups[1]}


def test_segmentation_encoders_match_seeds():
    "The EfficientNet entries use smp's `efficientnet-b*` encoders (the seeds' strings), not `timm-efficientnet-b*`."
    assert 'efficientnet-b2' in model_info('unetpp-effb2')['desc']
    assert 'efficientnet-b3' in model_info('unetpp-effb3')['desc']
    m = create_model('unetpp-effb3', n_out=4)
    assert type(m).__name__ == 'UnetPlusPlus' and 'EfficientNet' in type(m.encoder).__name__
    assert type(create_model('unet-resnet34')).__name__ == 'Unet'


def test_segmentation_dropout():
    m = create_model('unet-resnet18', n_out=3, dropout=0.2)
    assert isinstance(m.segmentation_head[0], nn.Dropout2d) and m.segmentation_head[0].p == 0.2
    assert not any(isinstance(o, nn.Dropout2d) for o in create_model('unet-resnet18').segmentation_head)


@pytest.mark.parametrize('name', [n for n in CLS if not n.startswith('tv-')])
@pytest.mark.parametrize('n_in', [1, 3])
def test_classification_shapes(name, n_in):
    m = create_model(name, n_in=n_in, n_out=5).eval()
    size = max(model_info(name)['min_size'], 32)
    with torch.no_grad(): y = m(torch.randn(2, n_in, size, size))
    assert y.shape == (2, 5)
    assert isinstance(m, nn.Sequential) and len(m) == 2          # fastai-style (body, head)
    groups = model_info(name)['splitter'](m)
    assert len(groups) == 2 and sum(len(g) for g in groups) == len(list(m.parameters()))


@pytest.mark.parametrize('name', [n for n in CLS if n.startswith('tv-')])
def test_torchvision_seed_networks_give_one_logit_per_class(name):
    "The seed-003 torchvision networks keep torchvision's own layout (their freeze regime names its blocks)."
    m = create_model(name, n_in=3, n_out=5).eval()
    size = max(model_info(name)['min_size'], 75)
    with torch.no_grad(): y = m(torch.randn(2, 3, size, size))
    assert (y[0] if isinstance(y, tuple) else y).shape == (2, 5)


def test_timm_head_dropout():
    m = create_model('densenet121', n_out=3)
    assert [o.p for o in m[1] if isinstance(o, nn.Dropout)] == [0.25, 0.5]  # fastai default ps=0.5
    m = create_model('efficientnet_b0', n_out=3, dropout=0.2)
    assert [o.p for o in m[1] if isinstance(o, nn.Dropout)] == [0.1, 0.2]


def test_scratch_cnns_follow_the_seeds():
    m = create_model('chestct-cnn', n_in=1, n_out=4)
    convs = [o for o in m[0].modules() if isinstance(o, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256, 512] and convs[0].in_channels == 1
    assert sum(isinstance(o, nn.BatchNorm2d) for o in m[0].modules()) == 5
    assert [o.p for o in m.modules() if isinstance(o, nn.Dropout2d)] == [0.15]*5
    lins = [o for o in m[1] if isinstance(o, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in lins] == [(512, 256), (256, 4)]
    assert [o.p for o in m[1] if isinstance(o, nn.Dropout)] == [0.4, 0.25]
    assert [o.p for o in create_model('chestct-cnn', dropout=0.2)[1] if isinstance(o, nn.Dropout)] == [0.2, 0.125]
    m = create_model('mri-cnn', n_out=3)
    assert [c.out_channels for c in m[0].modules() if isinstance(c, nn.Conv2d)] == [32, 64, 128]
    assert [o.p for o in m[1] if isinstance(o, nn.Dropout)] == [0.5]
    assert [o.out_features for o in m[1] if isinstance(o, nn.Linear)] == [128, 3]
    with torch.no_grad(): assert m.eval()(torch.randn(1, 3, 8, 8)).shape == (1, 3)


def test_scratch_pretrained_warns():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        m = create_model('mri-cnn', pretrained=True)
    assert isinstance(m, nn.Module) and any('no pretrained weights' in str(x.message) for x in w)


def test_register_model_decorator():
    @register_model('tiny-test-net', task='classification', family='test', default_size=16, has_pretrained=False)
    def tiny(n_in, n_out, pretrained, dropout): return nn.Sequential(nn.Flatten(), nn.LazyLinear(n_out))
    try:
        assert 'tiny-test-net' in list_models('classification')
        assert model_info('tiny-test-net')['family'] == 'test'
        assert create_model('tiny-test-net', n_out=7)(torch.randn(2, 1, 4, 4)).shape == (2, 7)
        with pytest.raises(MedvisionError, match='task must be one of'):
            register_model('bad', lambda **k: None, task='detection')
    finally:
        from medvision import models
        models._REGISTRY.pop('tiny-test-net', None)


def test_freeze_with_fastai_learner():
    "fastai's freeze() trains only the last group: the decoder (smp) or the head (timm)."
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    ds = [(torch.randn(3, 32, 32), torch.tensor(0))] * 2
    dls = DataLoaders(DataLoader(ds, bs=2), DataLoader(ds, bs=2))
    for name in ['unet-resnet18', 'resnet18']:
        m = create_model(name, n_out=2)
        learn = Learner(dls, m, loss_func=nn.CrossEntropyLoss(), splitter=model_info(name)['splitter'])
        learn.freeze()
        body = m.encoder if name.startswith('unet') else m[0]
        head = m.decoder if name.startswith('unet') else m[1]
        convs = [p for n, p in body.named_parameters() if p.ndim == 4]
        assert convs and not any(p.requires_grad for p in convs)
        assert all(p.requires_grad for p in head.parameters())
        learn.unfreeze()
        assert all(p.requires_grad for p in m.parameters())


@pytest.fixture
def empty_weight_cache(monkeypatch, tmp_path):
    "Offline mode with empty HF and torch caches: a pretrained request can only fail."
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path/'hf'))
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path/'torch'))
    yield
    torch.hub.set_dir(old)


@pytest.mark.parametrize('name', ['unetpp-effb2', 'unet-resnet34', 'densenet121', 'inception_v3', 'efficientnet_b3'])
def test_pretrained_offline_fails_fast_with_fix(name, empty_weight_cache):
    from huggingface_hub import constants
    t = time.time()
    with pytest.raises(MedvisionError) as e: create_model(name, pretrained=True)
    assert time.time() - t < 10
    msg = str(e.value)
    assert msg.startswith(f"{name}: no ImageNet weights for {name} found locally (tried ")
    assert 'HF cache' in msg and 'medvision weights export' in msg and 'MEDVISION_WEIGHTS' in msg
    for s in ['pretrained=False', '--no-pretrained', 'HF_HOME', 'TORCH_HOME', 'HF_HUB_OFFLINE=1']: assert s in msg
    assert constants.HF_HUB_OFFLINE is True  # the user's own offline setting is kept


@pytest.mark.network_probe
def test_pretrained_without_internet_here():
    "The real path: the Hub probe fails (tests are blocked from the network) and the failure is fast and says what to do."
    assert not _hub_reachable()
    from huggingface_hub import constants
    before, t = constants.HF_HUB_OFFLINE, time.time()
    with pytest.raises(MedvisionError, match='no ImageNet weights for unet-resnet18 found locally.*not reachable'):
        create_model('unet-resnet18', pretrained=True)
    assert time.time() - t < 10
    assert constants.HF_HUB_OFFLINE == before  # offline mode was switched on only for the call
