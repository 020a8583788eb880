"Tests for medvision.calibration: ECE on known cases, reliability bins, temperature recovery."
import numpy as np
import pytest
import torch

from medvision.core import MedvisionError
from medvision.calibration import calibration_table, ece, fit_temperature, TemperatureScaled, plot_reliability


def test_ece_known_answers():
    assert ece(np.eye(3), [0, 1, 2]) == 0
    assert ece(np.eye(3), [1, 2, 0]) == 1
    p = np.array([[0.6, 0.4]]*10)                                  # confidence 0.6, right 6 times in 10
    assert abs(ece(p, [0]*6 + [1]*4)) < 1e-12
    assert abs(ece(p, [0]*10) - 0.4) < 1e-12
    tb = calibration_table(p, [0]*6 + [1]*4, n_bins=10)
    assert len(tb) == 1 and tb['n'].iloc[0] == 10 and tb['lo'].iloc[0] == 0.5
    with pytest.raises(MedvisionError): ece(np.ones(3), [0, 1, 2])


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 4))
    y = torch.distributions.Categorical(logits=torch.tensor(z)).sample().numpy()
    T = fit_temperature(3*z, y)
    assert 2.6 < T < 3.4
    assert abs(fit_temperature(z, y) - 1) < 0.15
    m = TemperatureScaled(torch.nn.Identity(), T)
    x = torch.tensor(3*z[:5], dtype=torch.float32)
    assert torch.equal(m(x).argmax(1), x.argmax(1))
    fig = plot_reliability(torch.softmax(torch.tensor(3*z), 1).numpy(), y)
    assert 'ECE' in fig.axes[0].get_title()
