"""Class-conditional UNet, label dropout in training and classifier-free guidance (math/guidance.tex eq:cfg)."""

import dataclasses

import pytest
import torch

from ddpm_lite.configs import CONFIGS, TrainConfig
from ddpm_lite.guidance import GuidedModel
from ddpm_lite.models import UNet, UNetConfig
from ddpm_lite.train import train

SMALL = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                   num_classes=3)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = UNet(SMALL).eval()
    with torch.no_grad():  # a fresh label embedding is random anyway; make sure it is far from zero
        net.label.weight.normal_(0, 1)
    return net


def test_label_changes_prediction_and_none_means_no_label(model):
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 500, 999])
    with torch.no_grad():
        by_label = [model(x, t, torch.full((4,), k)) for k in range(4)]
        unlabelled = model(x, t)
    for a in range(4):
        for b in range(a + 1, 4):
            assert (by_label[a] - by_label[b]).abs().max() > 1e-4
    torch.testing.assert_close(unlabelled, by_label[3], rtol=0, atol=0)  # label 3 = num_classes = "no label"


def test_bad_labels_raise(model):
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="y must be"):
        model(x, t, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="y must be"):
        model(x, t, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="unconditional"):
        UNet(dataclasses.replace(SMALL, num_classes=0))(x, t, torch.tensor([0, 1]))


def test_guided_eps_is_eq_6_of_ho_and_salimans(model):
    """eps_guided = (1 + w) eps(x, t, y) - w eps(x, t); math/guidance.tex eq:cfg. One batched pass == two passes."""
    x, t, y = torch.randn(5, 1, 8, 8), torch.randint(0, 1000, (5,)), torch.tensor([0, 1, 2, 1, 0])
    with torch.no_grad():
        cond, uncond = model(x, t, y), model(x, t)
        for w in (0.0, 0.5, 3.0):
            torch.testing.assert_close(GuidedModel(model, y, w)(x, t), (1 + w) * cond - w * uncond,
                                       rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(GuidedModel(model, 2, 1.0)(x, t), 2 * model(x, t, torch.full((5,), 2)) - uncond,
                                   rtol=1e-5, atol=1e-5)


def test_guidance_bad_input(model):
    with pytest.raises(ValueError, match="w must be"):
        GuidedModel(model, 0, -1.0)
    with pytest.raises(ValueError, match="y must be"):
        GuidedModel(model, 3, 1.0)  # 3 is "no label", not a class
    with pytest.raises(ValueError, match="class-conditional"):
        GuidedModel(UNet(dataclasses.replace(SMALL, num_classes=0)), 0, 1.0)


def test_label_dropout_replaces_the_stated_fraction(monkeypatch):
    """Spy on the labels the network sees during training: N = 40 steps x 64 = 2,560 labels, p = 0.25;
    the dropped share is within 5 s.e. (5 * sqrt(p (1 - p) / N) = 0.043) of p, and kept labels are the data's."""
    config = TrainConfig(name="t", data="mnist", model=SMALL, steps=40, batch_size=64, lr=1e-3, warmup=1,
                         label_dropout=0.25, checkpoint_every=10_000)
    data = torch.randn(100, 1, 8, 8)
    labels = torch.arange(100) % 3
    seen = []
    forward = UNet.forward

    def spy(self, x_t, t, y=None):
        seen.append(y.clone())
        return forward(self, x_t, t, y)

    monkeypatch.setattr(UNet, "forward", spy)
    train(config, data, labels=labels, device="cpu", progress=False)
    y = torch.cat(seen)
    assert len(y) == 2560
    dropped = (y == 3).double().mean().item()
    assert abs(dropped - 0.25) < 5 * (0.25 * 0.75 / 2560) ** 0.5
    assert set(y[y != 3].tolist()) == {0, 1, 2}


def test_conditional_training_needs_labels_and_validates_config():
    config = dataclasses.replace(CONFIGS["mnist-cfg"], model=SMALL, steps=1)
    with pytest.raises(ValueError, match="labels must be given"):
        train(config, torch.randn(10, 1, 8, 8), device="cpu", progress=False)
    with pytest.raises(ValueError, match="labels must be int64"):
        train(config, torch.randn(10, 1, 8, 8), labels=torch.full((10,), 5), device="cpu", progress=False)
    with pytest.raises(ValueError, match="labels must be given"):
        train(CONFIGS["2d"], torch.randn(10, 2), labels=torch.zeros(10, dtype=torch.int64), device="cpu",
              progress=False)
    with pytest.raises(ValueError, match="label_dropout"):
        dataclasses.replace(CONFIGS["mnist"], label_dropout=0.1)
    with pytest.raises(ValueError, match="label_dropout"):
        dataclasses.replace(CONFIGS["mnist-cfg"], label_dropout=1.0)
