"""Networks: output shapes, the DDPM CIFAR-10 UNet's size, and that the time input matters."""

import pytest
import torch
from torch.testing import assert_close

from ddpm_lite.configs import CONFIGS
from ddpm_lite.devices import pick_device
from ddpm_lite.models import MLP, MLPConfig, UNet, UNetConfig, count_parameters, make_model, timestep_embedding
from ddpm_lite.schedules import NoiseSchedule
from ddpm_lite.train import ddpm_loss


def test_timestep_embedding_is_sinusoidal():
    emb = timestep_embedding(torch.tensor([0, 5]), 8)
    assert emb.shape == (2, 8)
    assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))  # sin(0) = 0, cos(0) = 1
    assert_close(emb[1, 0], torch.sin(torch.tensor(5.0)))  # the first frequency is 1


def test_mlp_shapes_and_time_conditioning():
    torch.manual_seed(0)
    model = MLP(MLPConfig(data_dim=3))
    x = torch.randn(7, 3)
    out = model(x, torch.full((7,), 10))
    assert out.shape == (7, 3)
    assert not torch.allclose(out, model(x, torch.full((7,), 900)))  # the prediction depends on t


@pytest.mark.parametrize("config", [UNetConfig(), CONFIGS["mnist"].model, UNetConfig(attention_resolutions=())])
def test_unet_output_shape_matches_input(config):
    torch.manual_seed(0)
    model = UNet(config)
    x = torch.randn(3, 1, 28, 28)
    out = model(x, torch.tensor([0, 500, 999]))
    assert out.shape == x.shape
    assert not torch.allclose(model(x, torch.tensor([0, 0, 0])), model(x, torch.tensor([999, 999, 999])))


def test_ddpm_cifar10_unet_has_the_papers_35_7_million_parameters():
    """Ho et al. 2020, appendix B: 35.7 M parameters for CIFAR-10 (this count matches the released model's)."""
    model = make_model(CONFIGS["cifar10"].model)
    assert count_parameters(model) == 35_746_307


def test_cifar10_config_trains_two_steps_on_cpu():
    """The GPU recipe runs on a CPU too: two optimiser steps on a batch of two images."""
    torch.manual_seed(0)
    config = CONFIGS["cifar10"]
    model = make_model(config.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    schedule = NoiseSchedule.named(config.schedule, config.T)
    x_0 = torch.rand(2, 3, 32, 32) * 2 - 1
    before = model.inp.weight.detach().clone()
    for _ in range(2):
        loss = ddpm_loss(model, schedule, x_0, generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.inp.weight)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [(dict(image_size=30), "image_size"), (dict(base_channels=12, groups=8), "divisible by groups")],
)
def test_unet_config_rejects_impossible_shapes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**kwargs)


def test_make_model_builds_the_network_a_config_describes():
    assert isinstance(make_model(MLPConfig()), MLP) and isinstance(make_model(UNetConfig()), UNet)
    with pytest.raises(ValueError, match="config must be an MLPConfig or a UNetConfig"):
        make_model({"hidden": 3})


def test_pick_device_prefers_the_argument_then_the_model():
    """One rule for training, sampling and the CLI: the device asked for, else the model's weights', else the best
    available; a module without weights or a plain function runs on the CPU."""
    assert pick_device("cpu", MLP(MLPConfig())) == torch.device("cpu")
    assert pick_device(None, MLP(MLPConfig()).to("meta")) == torch.device("meta")
    assert pick_device(None, lambda x_t, t: x_t) == torch.device("cpu")
    assert pick_device(None, torch.nn.Identity()) == torch.device("cpu")
    assert pick_device().type in {"cuda", "mps", "cpu"}
