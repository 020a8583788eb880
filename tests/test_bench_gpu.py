"""`bench/gpu.py --smoke`: the GPU benchmark's whole path (synthetic data in each real layout, every seed recipe, the
full-step and model-only timings, the one-epoch run) at tiny size on the CPU."""
import json


def test_gpu_bench_smoke(tmp_path, bench_script):
    out = tmp_path/'gpu.json'
    res = bench_script('gpu').main(['--smoke', '--out', str(out), '--work', str(tmp_path/'data')])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert set(res['recipes']) == {'bodypart-densenet121', 'chestct-resnet50', 'chestct-inception3', 'covid-unetpp-b2',
                                   'covid-unetpp-b3', 'mri-cnn'}
    for key, r in res['recipes'].items():
        assert 'error' not in r, (key, r.get('trace'))
        m = r['fp32']
        assert 'error' not in m, (key, m)
        assert m['s_per_step'] > 0 and m['model_only_s_per_step'] > 0, (key, m)
        # both figures are rounded (1 decimal / 4 decimals): agree within the rounding, or 1 %
        assert abs(m['images_per_s'] - r['bs'] / m['s_per_step']) <= max(0.01 * m['images_per_s'], 0.06)
        assert r['step_over_model_only'] == m['step_over_model_only']
        assert m['last_loss'] == m['last_loss']   # finite, not NaN
    assert res['epoch']['n_slices'] == 12 and res['epoch']['train_time_s'] > 0


def test_gpu_bench_refuses_without_cuda_or_unknown_keys(tmp_path, capsys, bench_script):
    import pytest, torch
    mod = bench_script('gpu')
    with pytest.raises(SystemExit): mod.main(['--smoke', '--only', 'no-such-recipe', '--out', str(tmp_path/'x.json')])
    assert 'unknown recipe keys' in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit): mod.main(['--out', str(tmp_path/'x.json')])
        assert 'no CUDA device' in capsys.readouterr().err
