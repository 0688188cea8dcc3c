"""Hook points: names, exact values, stopping early, patching, restoring the model, other modules."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import saekit
from saekit.hooks import HookError, HookLayout, capture, hook_points, patch, resolve, run_until
from saekit.nanochat import norm

KINDS = ["hook_resid_pre", "hook_attn_out", "mlp.hook_post", "hook_mlp_out", "hook_resid_post"]


@pytest.fixture(scope="module")
def model_and_ids():
    model, tokenizer = saekit.load_model("tests/fixtures/nanochat/current-2026-07")
    ids = torch.randint(0, 500, (2, 40), generator=torch.Generator().manual_seed(0))
    return model, ids


def no_hooks_left(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules()) and \
        "forward" not in model.__dict__


def test_every_layer_has_five_hook_points_in_forward_order(model_and_ids):
    model, _ = model_and_ids
    names = list(hook_points(model))
    assert names == [f"blocks.{i}.{kind}" for i in range(4) for kind in KINDS]
    point, module = resolve(model, "blocks.2.mlp.hook_post")
    assert module is model.transformer.h[2].mlp.c_proj and point.side == "input"


def test_captured_values_are_the_modules_inputs_and_outputs(model_and_ids):
    model, ids = model_and_ids
    seen = {}
    block = model.transformer.h[1]
    handles = [block.register_forward_pre_hook(lambda m, a: seen.__setitem__("pre", a[0])),
               block.register_forward_hook(lambda m, a, o: seen.__setitem__("post", o)),
               block.attn.register_forward_hook(lambda m, a, o: seen.__setitem__("attn", o)),
               block.mlp.register_forward_hook(lambda m, a, o: seen.__setitem__("mlp", o))]
    with torch.no_grad(), capture(model, [f"blocks.1.{k}" for k in KINDS]) as acts:
        logits = model(ids)
    for h in handles:
        h.remove()
    assert logits.shape == (2, 40, 512)
    assert torch.equal(acts["blocks.1.hook_resid_pre"], seen["pre"])
    assert torch.equal(acts["blocks.1.hook_resid_post"], seen["post"])
    assert torch.equal(acts["blocks.1.hook_attn_out"], seen["attn"])
    assert torch.equal(acts["blocks.1.hook_mlp_out"], seen["mlp"])
    mid = seen["pre"] + seen["attn"]
    assert torch.allclose(acts["blocks.1.mlp.hook_post"], F.relu(block.mlp.c_fc(norm(mid))).square())
    assert acts["blocks.1.mlp.hook_post"].shape[-1] == 4 * 64
    # the lambdas rescale the stream between blocks: resid_post(1) is not resid_pre(2)
    with torch.no_grad(), capture(model, "blocks.2.hook_resid_pre") as nxt:
        model(ids)
    assert not torch.allclose(nxt["blocks.2.hook_resid_pre"], acts["blocks.1.hook_resid_post"])
    assert no_hooks_left(model)


def test_stopping_early_skips_later_layers_and_gives_the_same_values(model_and_ids):
    model, ids = model_and_ids
    later_calls = []
    handle = model.transformer.h[2].register_forward_hook(lambda *a: later_calls.append(1))
    with torch.no_grad(), capture(model, ["blocks.0.hook_resid_post", "blocks.1.hook_attn_out"]) as full:
        model(ids)
    assert later_calls == [1]
    early = run_until(model, ids, ["blocks.1.hook_attn_out", "blocks.0.hook_resid_post"])
    assert later_calls == [1]  # block 2 never ran
    handle.remove()
    for name in full:
        assert torch.equal(full[name], early[name])
    with torch.no_grad(), capture(model, "blocks.1.hook_attn_out", stop=True):
        assert model(ids) is None
    assert no_hooks_left(model)
    assert model(ids).shape == (2, 40, 512)  # the model works normally again


def test_patching_replaces_activations_in_flight(model_and_ids):
    model, ids = model_and_ids
    with torch.no_grad():
        clean = model(ids)
        with patch(model, "blocks.2.hook_resid_post", lambda x: x.clone()):
            assert torch.equal(model(ids), clean)
        with patch(model, "blocks.2.hook_resid_post", lambda x: None):  # None leaves it alone
            assert torch.equal(model(ids), clean)
        with patch(model, "blocks.3.hook_resid_pre", lambda x: torch.zeros_like(x)), \
                capture(model, "blocks.3.hook_resid_pre") as seen:
            patched = model(ids)
        assert not torch.allclose(patched, clean) and seen["blocks.3.hook_resid_pre"].abs().max() == 0
        direction = torch.randn(64, generator=torch.Generator().manual_seed(1))
        with patch(model, "blocks.1.mlp.hook_post", lambda x: x * 2), \
                patch(model, "blocks.2.hook_attn_out", lambda x: x + direction):
            assert not torch.allclose(model(ids), clean)
    assert no_hooks_left(model)
    with torch.no_grad():
        assert torch.equal(model(ids), clean)


def test_hooks_are_removed_even_when_the_block_raises(model_and_ids):
    model, ids = model_and_ids
    with pytest.raises(RuntimeError, match="boom"):
        with patch(model, "blocks.0.hook_mlp_out", lambda x: x), capture(model, "blocks.1.hook_resid_post",
                                                                           stop=True):
            raise RuntimeError("boom")
    assert no_hooks_left(model)


def test_unknown_names_say_what_is_valid_and_what_was_meant(model_and_ids):
    model, _ = model_and_ids
    with pytest.raises(HookError, match=r"'blocks.1.hook_resid_pst'. Did you mean 'blocks.1.hook_resid_post'\? "
                                        r"Valid names are blocks.\{0..3\}.\{hook_resid_pre, hook_attn_out"):
        resolve(model, "blocks.1.hook_resid_pst")
    with pytest.raises(HookError, match="'blocks.9.hook_resid_post'"):
        with capture(model, ["blocks.0.hook_resid_post", "blocks.9.hook_resid_post"]):
            pass
    assert no_hooks_left(model)


class TinyBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.mixer = nn.Linear(4, 4)
        self.ffn = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))

    def forward(self, x):
        x = x + self.mixer(x)
        return x + self.ffn(x)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([TinyBlock() for _ in range(3)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_any_module_maps_onto_the_names_with_a_layout():
    layout = HookLayout(blocks="layers", points={"hook_resid_pre": ("", "input"), "hook_resid_post": ("", "output"),
                                                 "hook_attn_out": ("mixer", "output"),
                                                 "mlp.hook_post": ("ffn.2", "input")})
    net = TinyNet()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    assert list(hook_points(net, layout))[:4] == ["blocks.0.hook_resid_pre", "blocks.0.hook_attn_out",
                                                   "blocks.0.mlp.hook_post", "blocks.0.hook_resid_post"]
    acts = run_until(net, x, ["blocks.1.hook_resid_post", "blocks.0.mlp.hook_post"], layout=layout)
    with torch.no_grad():
        after0 = net.layers[0](x)
        assert torch.equal(acts["blocks.1.hook_resid_post"], net.layers[1](after0))
        hidden = net.layers[0].ffn[1](net.layers[0].ffn[0](x + net.layers[0].mixer(x)))
        assert torch.equal(acts["blocks.0.mlp.hook_post"], hidden)
