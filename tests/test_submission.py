"`medvision predict --submission`: the UNIFESP Kaggle format (`SOPInstanceUID,Target`, space-separated class ids)."
import pandas as pd, pydicom
from medvision.cli import main
from medvision.recipes.core import train
from medvision.synth import synth

def test_predict_writes_unifesp_submission(tmp_path):
    data = synth('unifesp-dicom', tmp_path/'uni', n=24, size=32)
    train('bodypart-tiny', data, tmp_path/'m', show_progress=False, epochs=1, size=32)
    tests = sorted((data/'test').rglob('*.dcm'))
    assert main(['predict', '--model', str(tmp_path/'m'), str(data/'test'), '--submission', str(tmp_path/'sub.csv')]) == 0
    sub = pd.read_csv(tmp_path/'sub.csv', dtype=str)
    assert list(sub.columns) == ['SOPInstanceUID', 'Target'] and len(sub) == len(tests)
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in tests}
    assert set(sub.SOPInstanceUID) == uids                                  # from the DICOM headers
    assert all(t.isdigit() and 0 <= int(t) < 22 for t in sub.Target)        # one class id each (single-label model)
    assert main(['predict', '--model', str(tmp_path/'m'), str(data/'test'), '--submission', str(tmp_path/'s2.csv'),
                 '--threshold', '0.0']) == 0
    s2 = pd.read_csv(tmp_path/'s2.csv', dtype=str)
    assert all(len(t.split()) == 22 for t in s2.Target)                     # every id reaches threshold 0

def test_submission_needs_a_classification_model(tmp_path, capsys):
    data = synth('covid-npy', tmp_path/'c', n=6, size=32, n_radiopedia=4)
    train('covid-tiny', data, tmp_path/'m', show_progress=False, epochs=1, size=32)
    rc = main(['predict', '--model', str(tmp_path/'m'), str(data/'test_images_medseg.npy'), '--out', str(tmp_path/'o'),
               '--submission', str(tmp_path/'s.csv')])
    assert rc != 0 and 'classification model' in capsys.readouterr().err
