"""The Matryoshka BatchTopK SAE: the nested loss by hand, its prefix structure, the BatchTopK threshold,
AuxK's reach, saving as a JumpReLU with the widths kept, and training."""

import json

import pytest
import torch
import torch.nn.functional as F

from saekit.sae import MatryoshkaSAE, SAEConfig, create_sae, default_lr
from saekit.sae.io import load_sae, save_sae
from saekit.store import InMemoryStore
from saekit.train import TrainConfig, _Trainer, train_sae

D_IN, D_SAE, K = 8, 32, 4
WIDTHS = [4, 12, 32]


def make(seed=0, **overrides):
    cfg = SAEConfig(architecture="matryoshka", d_in=D_IN, d_sae=D_SAE, k=K, matryoshka_widths=WIDTHS,
                    hook_name="blocks.3.hook_resid_post", **overrides)
    sae = create_sae(cfg)
    g = torch.Generator().manual_seed(seed)
    sae.init_weights(g)
    with torch.no_grad():  # move every parameter off its initial value so no term hides behind a zero
        for p in sae.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return sae.train()


def data(n=64, seed=1):
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 2


def batch_topk(sae, x):
    """The dense BatchTopK code: the K * n_tokens largest ReLU'd pre-activations of the batch."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    flat = F.relu(pre).flatten()
    kept = flat.topk(K * len(x)).indices
    return torch.zeros_like(flat).scatter(0, kept, flat[kept]).reshape(pre.shape), flat[kept].min()


def test_loss_sums_each_prefix_reconstruction():
    sae = make()
    x = data()
    f, _ = batch_topk(sae, x)
    by_hand = {name: (f[:, :w] @ sae.W_dec[:w] + sae.b_dec - x).pow(2).sum(-1).mean()
               for name, w in [("reconstruction_4", 4), ("reconstruction_12", 12), ("reconstruction", 32)]}
    total = sum(by_hand.values())
    dense_grads = torch.autograd.grad(total, [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec])
    out = sae(x)
    assert isinstance(sae, MatryoshkaSAE) and set(out.losses) == set(by_hand)
    for name, value in by_hand.items():
        assert torch.allclose(out.losses[name], value, rtol=1e-5), name
    assert torch.allclose(out.loss, total, rtol=1e-5)
    assert torch.allclose(out.x_hat, f @ sae.W_dec + sae.b_dec, atol=1e-5) and out.l0 == K
    for dense, sparse in zip(dense_grads, torch.autograd.grad(out.loss, [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec])):
        assert torch.allclose(dense, sparse, atol=1e-4)


def test_an_inner_prefix_is_reconstructed_by_its_own_latents_only():
    sae = make()
    out = sae(data())
    sae.zero_grad()
    out.losses["reconstruction_4"].backward()
    assert sae.W_dec.grad[4:].abs().max() == 0 and sae.W_dec.grad[:4].abs().max() > 0
    assert sae.W_enc.grad[:, 4:].abs().max() == 0 and sae.b_enc.grad[4:].abs().max() == 0
    # the whole dictionary's term reaches latents past the first prefix
    sae.zero_grad()
    sae(data()).losses["reconstruction"].backward()
    assert sae.W_dec.grad[12:].abs().max() > 0


def test_threshold_is_learned_as_in_batchtopk_and_used_at_inference():
    sae = make(threshold_momentum=0.5)
    x, second_x = data(), data(seed=2)
    first = float(batch_topk(sae, x)[1].detach())
    sae(x)
    assert torch.allclose(sae.threshold, torch.full((D_SAE,), first))
    second = float(batch_topk(sae, second_x)[1].detach())
    sae(second_x)
    assert torch.allclose(sae.threshold, torch.full((D_SAE,), 0.5 * first + 0.5 * second))
    sae.eval()
    pre = sae.pre_activations(x)
    assert torch.equal(sae.encode(x), F.relu(pre) * (pre > sae.threshold))
    out = sae(x)  # inference: a JumpReLU, reconstructed by the whole dictionary
    assert set(out.losses) == {"reconstruction"}


def test_auxk_reaches_only_dead_latents_and_never_b_dec(assert_auxk_reach):
    sae = make()
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[[2, 7, 11, 20, 21, 30]] = True  # in every prefix
    aux = sae(data(), dead=dead).losses["auxk"]
    assert_auxk_reach(sae, aux, dead)


def test_saved_as_a_jumprelu_that_loads_back_exactly(tmp_path):
    sae = make()
    sae(data())  # learn a threshold
    sae.eval()
    path = save_sae(sae, tmp_path / "m", scale=0.5)
    loaded = load_sae(path)
    raw = sae.to_raw_space(0.5)
    assert type(loaded) is MatryoshkaSAE and loaded.cfg == sae.cfg and loaded.cfg.matryoshka_widths == WIDTHS
    assert sorted(loaded.saelens_tensors()) == ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]
    for name, tensor in raw.saelens_tensors().items():
        assert torch.equal(loaded.saelens_tensors()[name], tensor), name
    x = data() * 2
    assert torch.equal(loaded.encode(x), raw.encode(x)) and (loaded.encode(x) > 0).any()
    cfg = json.loads((path / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu"
    assert cfg["metadata"]["saekit"]["config"]["matryoshka_widths"] == WIDTHS


def test_trains_and_logs_every_prefix():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4096, D_IN, generator=g) @ torch.randn(D_IN, D_IN, generator=g)
    sae = create_sae(SAEConfig(architecture="matryoshka", d_in=D_IN, d_sae=D_SAE, k=K, matryoshka_widths=WIDTHS))
    assert _Trainer(sae, TrainConfig()).base_lr == pytest.approx(default_lr(D_SAE))
    result = train_sae(sae, InMemoryStore.from_tensor(x), TrainConfig(steps=100, batch_size=256, log_every=10),
                       progress=False)
    h = result.history
    assert {"reconstruction", "reconstruction_4", "reconstruction_12", "auxk"} <= set(h)
    assert h["reconstruction_4"][-1] < h["reconstruction_4"][0] and h["reconstruction"][-1] < h["reconstruction"][0]
    # trained, each prefix reconstructs better than the smaller ones it contains
    assert h["reconstruction"][-1] < h["reconstruction_12"][-1] < h["reconstruction_4"][-1]
    assert float(result.sae.threshold[0]) > 0 and not result.sae.training


@pytest.mark.parametrize("overrides, message", [
    (dict(matryoshka_widths=[4, 12]), "ending at d_sae \\(32\\), got \\[4, 12\\]"),
    (dict(matryoshka_widths=[12, 4, 32]), "increasing positive integers"),
    (dict(matryoshka_widths=[0, 32]), "increasing positive integers"),
    (dict(k=None), "matryoshka needs 0 < k <= d_sae"),
    (dict(architecture="batchtopk", matryoshka_widths=[4, 32]), "matryoshka_widths is for architecture='matryoshka'"),
])
def test_bad_configurations(overrides, message):
    with pytest.raises(ValueError, match=message):
        SAEConfig(**{"architecture": "matryoshka", "d_in": D_IN, "d_sae": D_SAE, "k": K, **overrides})


def test_default_widths():
    assert SAEConfig(architecture="matryoshka", d_in=D_IN, d_sae=2048, k=K).matryoshka_widths == [128, 512, 2048]
    assert SAEConfig(architecture="matryoshka", d_in=D_IN, d_sae=8, k=K).matryoshka_widths == [2, 8]
    assert SAEConfig(architecture="matryoshka", d_in=D_IN, d_sae=32, k=K, matryoshka_widths=(4, 32)).matryoshka_widths \
        == [4, 32]
