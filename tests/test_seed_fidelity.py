"""Seed fidelity: each faithful `seed*` recipe is checked, choice by choice, against the value its seed deck states.

EXPECTED is the list of concrete choices per seed (the deck's value, written here independently of the library);
`medvision.recipes.seeds.measure_recipe` measures the built objects (network, augmentation objects, torch's
optimiser param_groups, the one-cycle schedule against torch's OneCycleLR, the loss against smp on a fixed batch,
split sizes on synthetic twins of the layouts). Any change to a listed choice fails here."""
import numpy as np, pytest, torch
from medvision.recipes.core import get_recipe, register_recipe, train
from medvision.recipes.seeds import SEED_CHOICES, measure_recipe

EXPECTED = {
    'seed000-densenet121': {
        'network body parameters (DenseNet-121)': 6_953_856, 'input size': 224, 'intensity window percentiles': (1, 99),
        'channels (grey duplicated to RGB)': 3, 'vertical flip': True, 'max warp': 0.2, 'max rotate': 30.0, 'max zoom': 1.5,
        'max lighting': 0.4, 'RandomResizedCrop scale': (0.6, 1.4), 'class balancing': 'oversample',
        'lr_find suggestion': 'minimum', 'frozen epochs (fit_one_cycle)': 3, 'unfrozen epochs': 10},
    'seed001-unetpp-b2': {
        'network parameters (UNet++ EfficientNet-B2, 1 in, 4 classes)': 10_401_158, 'HU clip': (-1500, 500),
        'validation slices (first MedSeg)': 24, 'Radiopaedia slices in training': 'all',
        'rotation range (degrees either way)': 180.0, 'flips': 'horizontal only', 'loss': 'cross-entropy',
        'optimiser (betas, eps, weight decay)': ((0.9, 0.999), 1e-8, 0.0), 'early stopping (monitor, patience)': ('valid_loss', 7),
        'best model kept on': 'valid_loss', 'mIoU rule': 'present'},
    'seed002-cnn': {
        'network parameters': 2_861_379, 'conv filters / kernels': ((32, 3), (64, 2), (64, 2), (64, 2)),
        'dense units': (512, 256, 128, 3), 'dense dropout': (0.5, 0.5, 0.5), 'input (size, channels)': (150, 3),
        'resize interpolation': 'nearest', 'intensity scaling': 'rescale 1/255, no normalisation', 'shear range (degrees)': 0.2,
        'zoom range': (0.8, 1.2), 'horizontal flip p': 0.5, 'Gaussian noise σ (0–255 scale, before rescale)': 0.1,
        'optimiser (lr, betas, eps, weight decay)': (1e-3, (0.9, 0.999), 1e-7, 0.0), 'batch size': 32, 'epochs': 100,
        'steps per epoch (train, validation)': (90, 30), 'early stopping (monitor, patience)': ('valid_loss', 10),
        'learning-rate schedule': 'constant'},
    'seed003-cnn': {
        'network parameters': 14_547_908, 'dense layers': (512, 256, 4), 'dropout (2d, dense)': (0.15, 0.4, 0.25),
        'input (size, channels)': (224, 1), 'resize': 'pad', 'horizontal flip p': 0.5, 'rotation degrees': (-10.0, 10.0),
        'brightness / contrast factors': ((0.9, 1.1), (0.9, 1.1)), 'normalisation (mean, std)': (0.5, 0.5)},
    'seed003-resnet50': {
        'network parameters (ImageNet head)': 25_557_032, 'phase 1 trains': ('fc',), 'phase 2 trains': ('fc', 'layer4')},
    'seed003-inception3': {
        'network parameters (ImageNet heads)': 27_161_264, 'phase 1 trains': ('AuxLogits', 'fc'),
        'phase 2 trains': ('AuxLogits', 'Mixed_7c', 'fc')},
    'seed004-unetpp-b3': {
        'network': 'unetplusplus-timm-efficientnet-b3', 'network parameters (1 in, 4 classes)': 13_624_508, 'input size': 384,
        'training slices': 'MedSeg only', 'split (train, valid) of 10 slices': (8, 2),
        'standardisation': 'mean/std of all MedSeg slices',
        'augmentation probabilities (hflip, vflip, rot90, affine, brightness/contrast)': (0.5, 0.3, 0.3, 0.4, 0.2),
        'affine (scale, rotate, shear, translate)': ((0.95, 1.05), 10.0, 5.0, (0.0, 0.03)),
        'brightness / contrast limits': (0.1, 0.1), 'sampler weight of a flagged slice': 3.0,
        'loss factors (CE, Dice, Focal)': (0.25, 0.5, 0.25), 'focal γ': 2.5,
        'CE weights = balanced, from the training masks': True,
        'loss equals 0.25·CE(w) + 0.5·smp Dice + 0.25·smp Focal on a fixed batch': True,
        'optimiser (betas, eps, weight decay, decay on 1-D params)': ((0.9, 0.999), 1e-8, 1e-4, True),
        'OneCycleLR max lr': 5e-4, 'lr schedule matches torch OneCycleLR (max |Δ| / max lr < 1%)': True,
        'batch size': 6, 'epochs': 60, 'best model on': 'batch_mean_dice'},
}

def same(a, b):
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool): return a is b or a == b and type(a) is type(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float, np.floating, np.integer)):
        return bool(np.isclose(float(a), float(b), rtol=1e-6, atol=1e-12))
    return a == b

def test_table_is_this_list():
    "The notebook's table (SEED_CHOICES) lists exactly these choices with these values."
    table = {}
    for seed, name, choice, value, where in SEED_CHOICES: table.setdefault(name, {})[choice] = value
    assert set(table) == set(EXPECTED)
    for name, choices in EXPECTED.items():
        assert set(table[name]) == set(choices), name
        bad = [c for c, v in choices.items() if not same(v, table[name][c])]
        assert not bad, (name, bad)

@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_faithful_recipe_matches_seed(name, tmp_path):
    got = measure_recipe(name, tmp_path)
    bad = {c: (v, got.get(c, '(not measured)')) for c, v in EXPECTED[name].items() if not same(v, got.get(c))}
    assert not bad, f"{name} differs from its seed: {bad}"

@pytest.mark.parametrize('name,change', [('seed002-cnn', dict(bs=16)), ('seed002-cnn', dict(augs='mri-light')),
                                         ('seed003-cnn', dict(augs='ct-light')), ('seed004-unetpp-b3', dict(wd=1e-2))])
def test_a_changed_choice_is_caught(name, change, tmp_path):
    orig = get_recipe(name)
    register_recipe(orig.replace(**change))
    try:
        got = measure_recipe(name, tmp_path)
        assert any(not same(v, got.get(c)) for c, v in EXPECTED[name].items())
    finally: register_recipe(orig)

def test_reproduces_says_what_is_not_stated():
    for name in EXPECTED:
        r = get_recipe(name)
        assert r.reproduces.startswith(f"seed {name[4:7]}"), name
    assert 'bug' in get_recipe('seed004-unetpp-b3').reproduces             # clip of standardised slices, sampler flag
    assert 'Not stated' in get_recipe('seed000-densenet121').reproduces

def test_recommended_recipes_name_their_seed_and_differences():
    for name, seed in [('covid-unetpp-b2', '001'), ('covid-unetpp-b3', '004'), ('chestct-cnn', '003'), ('chestct-resnet50', '003'),
                       ('chestct-inception3', '003'), ('mri-cnn', '002'), ('bodypart-densenet121', '000')]:
        r = get_recipe(name)
        assert r.reproduces.startswith(f"based on seed {seed}"), name
        assert f"Based on seed {seed}" in r.description and 'deliberately different' in r.description, name

# --- every faithful recipe trains one epoch on the synthetic twin of its layout --------------------------------

@pytest.fixture(scope='module')
def twins(tmp_path_factory):
    from medvision.synth import synth
    d = tmp_path_factory.mktemp('twins')
    return {'chestct': synth('chestct', d/'ct', n=4, size=40), 'mri': synth('mri-folders', d/'mri', n=6, size=40),
            'unifesp': synth('unifesp-png', d/'uni', n=30, size=40),
            'covid': synth('covid-npy', d/'covid', n=10, size=32, n_radiopedia=8)}

TINY = {  # (data, overrides): tiny sizes (and a small network for the heavy ones) so the fast suite stays fast
    'seed000-densenet121': ('unifesp', dict(size=32, bs=8, epochs=1, freeze_epochs=1, lr=1e-3, pretrained=False, arch='resnet18')),
    'seed001-unetpp-b2': ('covid', dict(size=32, bs=4, epochs=1, pretrained=False, arch='unet-resnet18')),
    'seed002-cnn': ('mri', dict(size=48, bs=4, epochs=1)),
    'seed003-cnn': ('chestct', dict(size=64, bs=4, epochs=1)),
    'seed003-resnet50': ('chestct', dict(size=32, bs=8, epochs=1, freeze_epochs=1, pretrained=False)),
    'seed003-inception3': ('chestct', dict(size=32, bs=8, epochs=1, freeze_epochs=1, pretrained=False, arch='tv-resnet50')),
    'seed004-unetpp-b3': ('covid', dict(size=32, bs=4, epochs=1, pretrained=False, arch='unet-resnet18')),
}

def _check_run(res, name):
    r = get_recipe(name)
    planned = 2 if r.schedule in ('fine_tune', 'head_then_last') else 1
    assert res['epochs_run'] == planned and len(res['history']) == planned
    assert res['epochs_planned'] == planned and not res['stopped_early']   # the frozen phase counts in the plan
    assert all(np.isfinite(h['train_loss']) for h in res['history'])
    assert res['monitor'] == r.monitor

# every faithful recipe, one epoch per phase: 13 s together on 2 idle cores (the own-network runs below add 18 s: slow)
@pytest.mark.parametrize('name', sorted(TINY))
def test_one_epoch_tiny(name, twins, tmp_path):
    data, kw = TINY[name]
    res = train(name, twins[data], tmp_path/'run', show_progress=False, **kw)
    _check_run(res, name)

@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(TINY))
def test_one_epoch_own_network(name, twins, tmp_path):
    "The recipe's own network (no arch override) for one epoch per phase at a small size."
    data, kw = TINY[name]
    kw = {k: v for k, v in kw.items() if k != 'arch'}
    if 'inception' in name: kw['size'] = 75
    res = train(name, twins[data], tmp_path/'run', show_progress=False, **kw)
    _check_run(res, name)

@pytest.mark.parametrize('name', sorted(TINY))
def test_own_network_one_batch_forward_backward(name):
    "Construction + one forward/backward of each faithful recipe's own network and loss at a small size."
    from medvision.recipes.seeds import seed_learner
    r = get_recipe(name)
    n_cls = {'seed000-densenet121': 22, 'seed002-cnn': 3}.get(name, 4)
    learn = seed_learner(name, n_cls)
    size = 75 if 'inception' in name else 64 if r.task == 'segmentation' else 32
    x = torch.randn(2, r.n_in, size, size)
    y = torch.randint(0, n_cls, (2, size, size) if r.task == 'segmentation' else (2,))
    learn.model.train()
    loss = learn.loss_func(learn.model(x), y)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in learn.model.parameters())
