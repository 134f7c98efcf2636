"""umsrep_core.models.umsrep: shapes, one encoder pass, freezing, a falling loss."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from umsrep_core.models import (
    HEADS,
    ModelConfig,
    SingleTask,
    UMSRep,
    count_parameters,
    for_inference,
    set_trainable,
)

TINY = ModelConfig(width=4, depth=2, n_seg=3, n_classes=2, input_size=32, dec_width=8,
                   hidden=8)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize(("norm", "unshuffle"), [("batch", 1), ("group", 1), ("batch", 2)])
def test_output_shapes_of_every_head(norm: Literal["batch", "group"], unshuffle: int) -> None:
    config = ModelConfig(width=4, depth=3, n_seg=4, n_classes=5, input_size=64, norm=norm,
                         unshuffle=unshuffle)
    model = UMSRep(config).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 64, 64))
    assert set(out) == set(HEADS)
    assert out["denoise"].shape == (2, 1, 64, 64)
    assert out["segment"].shape == (2, 4, 64, 64)
    assert out["classify"].shape == (2, 5)
    with torch.no_grad():  # a non-square input of allowed size works too
        assert model(torch.rand(1, 1, 64, 32), heads=["segment"])["segment"].shape == (
            1, 4, 64, 32)


def test_default_model_is_small_enough_for_a_cpu() -> None:
    model = UMSRep()
    assert 500_000 < count_parameters(model) < 3_000_000
    # the shared part must be the costly part: each decoder a fraction of the encoder
    encoder = count_parameters(model.encoder)
    assert all(count_parameters(head) < encoder / 5 for head in model.heads.values())


def test_served_model_folds_its_norms_and_keeps_its_outputs() -> None:
    model = UMSRep(TINY)
    for _ in range(3):  # running statistics away from their initial 0 and 1
        model(torch.rand(4, 1, 32, 32) * 3)
    model.eval()
    served = for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in served.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # a copy: untouched
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected, got = model(x), served(x)
    for head in HEADS:
        torch.testing.assert_close(got[head], expected[head], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("unshuffle", [1, 2])
def test_served_model_runs_its_decoders_stacked_with_the_same_outputs(unshuffle: int) -> None:
    model = UMSRep(ModelConfig(width=4, depth=3, n_seg=3, input_size=64, dec_width=4,
                               hidden=8, unshuffle=unshuffle))
    for _ in range(3):
        model(torch.rand(4, 1, 64, 64) * 3)
    model.eval()
    served = for_inference(model)
    assert served.stacked is not None and served.stacked.heads == ("denoise", "segment")
    stacked_calls: list[int] = []
    served.stacked.register_forward_hook(lambda *_: stacked_calls.append(1))
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        for heads in (HEADS, ("segment", "denoise"), ("segment",), ("classify", "denoise")):
            expected, got = model(x, heads=heads), served(x, heads=heads)
            assert list(got) == list(heads)
            for head in heads:
                torch.testing.assert_close(got[head], expected[head], rtol=1e-4, atol=1e-4)
    assert stacked_calls == [1, 1]  # only where both decoders were asked
    grouped = UMSRep(ModelConfig(width=4, depth=2, input_size=32, norm="group")).eval()
    assert for_inference(grouped).stacked is None  # group norms do not fold: no stacking


def test_unshuffle_runs_the_encoder_at_half_resolution_and_answers_at_full() -> None:
    config = ModelConfig(**{**TINY.to_dict(), "unshuffle": 2})
    model = UMSRep(config).eval()
    first = model.encoder.blocks[0][0][0]
    assert first.in_channels == 4  # each 2x2 of pixels, one cell of four channels
    seen: list[tuple[int, ...]] = []
    model.encoder.register_forward_hook(lambda _m, _i, out: seen.append(out[0][0].shape))
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        out = model(x)
    assert seen == [(1, 4, 16, 16)]  # the first skip: width 4, half the input's size
    assert out["segment"].shape == (1, 3, 32, 32) and out["denoise"].shape == x.shape
    for p in model.heads["denoise"].parameters():
        nn.init.zeros_(p)
    with torch.no_grad():  # still a residual on the input, pixel for pixel
        assert torch.equal(model(x, heads=["denoise"])["denoise"], x)


def test_encoder_runs_once_for_all_heads() -> None:
    model = UMSRep(TINY).eval()
    calls: list[int] = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        out = model(torch.rand(1, 1, 32, 32))
    assert len(out) == 3 and len(calls) == 1
    with torch.no_grad():
        assert set(model(torch.rand(1, 1, 32, 32), heads=("classify",))) == {"classify"}
    assert len(calls) == 2


def test_denoise_is_a_residual_on_the_input() -> None:
    model = UMSRep(TINY).eval()
    for p in model.heads["denoise"].parameters():
        nn.init.zeros_(p)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x, heads=["denoise"])["denoise"], x)


def test_single_task_has_one_head_and_the_same_encoder() -> None:
    shared = UMSRep(TINY)
    single = SingleTask(TINY, "segment")
    assert single.tasks == ("segment",)
    assert count_parameters(single.encoder) == count_parameters(shared.encoder)
    assert set(single(torch.rand(1, 1, 32, 32))) == {"segment"}
    with pytest.raises(ValueError, match="not \\['classify'\\]"):
        single(torch.rand(1, 1, 32, 32), heads=["classify"])
    with pytest.raises(ValueError, match="choose one or more"):
        SingleTask(TINY, "detect")


def test_bad_inputs_and_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="multiples of 4"):
        UMSRep(TINY)(torch.rand(1, 1, 30, 32))
    with pytest.raises(ValueError, match="multiple of"):
        ModelConfig(depth=3, input_size=100)
    with pytest.raises(ValueError, match="unshuffle \\* 2\\*\\*depth = 16"):
        ModelConfig(depth=3, input_size=72, unshuffle=2)  # a multiple of 8, not of 16
    with pytest.raises(ValueError, match="multiples of 8"):
        UMSRep(ModelConfig(**{**TINY.to_dict(), "unshuffle": 2}))(torch.rand(1, 1, 36, 32))
    with pytest.raises(ValueError, match="unknown model_config keys"):
        ModelConfig.from_dict({"width": 8, "colour": True})
    assert ModelConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="class_levels 4"):
        ModelConfig(depth=2, input_size=32, class_levels=4)


def test_the_classifier_can_pool_a_finer_level_too() -> None:
    """A finding smaller than a bottleneck cell still moves the classifier's input."""
    config = ModelConfig(**{**TINY.to_dict(), "class_levels": 2})  # the default
    head = UMSRep(config, heads=("classify",)).eval()
    seen: list[torch.Tensor] = []
    head.heads["classify"].mlp.register_forward_hook(
        lambda module, inputs, output: seen.append(inputs[0]))
    head(torch.rand(1, 1, 32, 32))
    assert seen[0].shape == (1, 2 * (8 + 16))  # mean and max of levels 1 (8 ch) and 2 (16 ch)
    alone = UMSRep(ModelConfig(**{**TINY.to_dict(), "class_levels": 1}), heads=("classify",))
    assert alone.heads["classify"].mlp[0].in_features == 2 * 16  # the bottleneck only


def _encoder_flags(model: UMSRep) -> list[bool]:
    return [all(p.requires_grad for p in block.parameters()) for block in model.encoder.blocks]


def test_freezing_strategies() -> None:
    model = UMSRep(ModelConfig(depth=4))  # five encoder blocks
    set_trainable(model, "frozen")
    assert _encoder_flags(model) == [False] * 5
    assert all(p.requires_grad for p in model.heads.parameters())
    set_trainable(model, "partial", n_blocks=2)
    assert _encoder_flags(model) == [False, False, False, True, True]
    set_trainable(model, "partial", n_blocks=1)
    assert _encoder_flags(model) == [False, False, False, False, True]
    set_trainable(model, "full")
    assert _encoder_flags(model) == [True] * 5
    with pytest.raises(ValueError, match="strategy"):
        set_trainable(model, "thawed")
    with pytest.raises(ValueError, match="n_blocks"):
        set_trainable(model, "partial", n_blocks=6)


def test_frozen_batch_norms_keep_their_statistics() -> None:
    model = UMSRep(TINY)
    set_trainable(model, "frozen")
    model.train()
    norms = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    before = [torch.clone(m.running_mean) for m in norms if m.running_mean is not None]
    model(torch.rand(4, 1, 32, 32) * 5)
    after = [m.running_mean for m in norms]
    assert all(torch.equal(b, a) for b, a in zip(before, after, strict=True) if a is not None)
    assert all(m.training for m in model.heads.modules() if isinstance(m, nn.BatchNorm2d))
    set_trainable(model, "full")
    model.train()
    assert all(m.training for m in norms)


def test_a_few_training_steps_lower_the_joint_loss() -> None:
    model = UMSRep(TINY).train()
    x = torch.rand(8, 1, 32, 32)
    clean = F.avg_pool2d(x, 3, stride=1, padding=1)
    masks = torch.stack([x > 0.5, x < 0.3, x > 0.8], dim=1).squeeze(2).float()
    labels = (x.mean(dim=(1, 2, 3)) > x.mean()).long()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss() -> torch.Tensor:
        out = model(x)
        return (F.mse_loss(out["denoise"], clean)
                + F.binary_cross_entropy_with_logits(out["segment"], masks)
                + F.cross_entropy(out["classify"], labels))

    losses = []
    for _ in range(15):
        optimiser.zero_grad()
        value = loss()
        value.backward()
        optimiser.step()
        losses.append(value.item())
    assert losses[-1] < 0.7 * losses[0]
