"""SAE architectures: each loss term against a hand computation, the straight-through and sparse
gradients, AuxK's reach, folding into raw space, saving in SAELens format, and bad configurations."""

import json

import pytest
import torch
import torch.nn.functional as F

from saekit.sae import SAEConfig, create_sae
from saekit.sae.base import ARCHITECTURES as ARCH_CLASSES
from saekit.sae.io import load_sae, load_sparsity, save_sae
from saekit.sae.sparse import Chosen, auxk_loss, chosen_values, sparse_decode

D_IN, D_SAE = 8, 32
ARCHS = ["relu", "topk", "batchtopk", "gated", "jumprelu"]


def make(architecture, seed=0, **overrides):
    settings = dict(k=4, sparsity_coefficient=0.3, jumprelu_init_threshold=0.2, jumprelu_bandwidth=0.5)
    cfg = SAEConfig(architecture=architecture, d_in=D_IN, d_sae=D_SAE, hook_name="blocks.3.hook_resid_post",
                    **{**settings, **overrides})
    sae = create_sae(cfg)
    g = torch.Generator().manual_seed(seed)
    sae.init_weights(g)
    with torch.no_grad():  # move every parameter off its initial value so no term hides behind a zero
        for p in sae.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return sae


def data(n=64, seed=1):
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 2


def rec(x, x_hat):
    return (x_hat - x).pow(2).sum(-1).mean()


# --------------------------------------------------------------------------- loss terms by hand


@pytest.mark.parametrize("april", [True, False])
def test_relu_losses(april):
    sae = make("relu", decoder_norm_penalty=april)
    x = data()
    f = F.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    x_hat = f @ sae.W_dec + sae.b_dec
    weights = sae.W_dec.norm(dim=1) if april else torch.ones(D_SAE)
    out = sae(x, sparsity_scale=0.5)
    assert torch.allclose(out.x_hat, x_hat, atol=1e-5)
    assert torch.allclose(out.losses["reconstruction"], rec(x, x_hat), rtol=1e-5)
    assert torch.allclose(out.losses["sparsity"], 0.3 * 0.5 * (f * weights).sum(-1).mean())
    assert torch.allclose(out.loss, out.losses["reconstruction"] + out.losses["sparsity"])
    assert out.l0 == (f > 0).sum(-1).float().mean() and torch.equal(out.fire_counts, (f > 0).sum(0))
    assert sae.unit_norm_decoder is (not april) and sae.resamples_dead is (not april)


@pytest.mark.parametrize("april", [True, False])
def test_relu_dense_step_gradients_match_autograd(april, monkeypatch):
    """ReLU's dense step builds its backward by hand (the L1 weights and the encoder bias inside the matmuls):
    its gradients, the input's included, against autograd of the written-out loss; under bfloat16 autocast
    they come back float32 and close."""
    monkeypatch.setattr(ARCH_CLASSES["relu"], "sparse_max_density", 0.0)
    sae = make("relu", decoder_norm_penalty=april)
    x = data(256).requires_grad_()
    wrt = [x, *sae.parameters()]
    f = F.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    weights = sae.W_dec.norm(dim=1) if april else torch.ones(D_SAE)
    expected = torch.autograd.grad(rec(x, f @ sae.W_dec + sae.b_dec) + 0.3 * 0.5 * (f * weights).sum(-1).mean(), wrt)
    exact = torch.autograd.grad(sae(x, sparsity_scale=0.5).loss, wrt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = torch.autograd.grad(sae(x, sparsity_scale=0.5).loss, wrt)
    for name, a, b, c in zip(["x", *dict(sae.named_parameters())], exact, expected, mixed):
        assert b.abs().max() > 0, name
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name
        assert c.dtype == torch.float32 and (c - b).norm() < 0.05 * b.norm(), name


def test_gated_losses_and_frozen_decoder():
    sae = make("gated")
    x = data()
    shared = (x - sae.b_dec) @ sae.W_enc
    gate, mag = shared + sae.b_gate, shared * sae.r_mag.exp() + sae.b_mag
    f = (gate > 0).float() * F.relu(mag)
    out = sae(x)
    assert torch.allclose(out.x_hat, f @ sae.W_dec + sae.b_dec, atol=1e-5)
    assert torch.allclose(out.losses["sparsity"], 0.3 * F.relu(gate).sum(-1).mean())
    assert torch.allclose(out.losses["gate_reconstruction"], rec(x, F.relu(gate) @ sae.W_dec + sae.b_dec))
    # the auxiliary term reaches the gate path only, never the decoder
    sae.zero_grad()
    out.losses["gate_reconstruction"].backward()
    assert sae.W_dec.grad is None or sae.W_dec.grad.abs().max() == 0
    assert sae.b_dec.grad.abs().max() > 0  # through the encoder's input, not the frozen decoder bias
    assert sae.b_gate.grad.abs().max() > 0 and (sae.r_mag.grad is None or sae.r_mag.grad.abs().max() == 0)
    # the L1 penalty falls on the gate, not on the magnitudes
    sae.zero_grad()
    sae(x).losses["sparsity"].backward()
    assert sae.b_mag.grad is None or sae.b_mag.grad.abs().max() == 0


def test_topk_keeps_k_per_token_and_matches_dense_gradients():
    sae = make("topk")
    x = data()
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    values, idx = pre.topk(4, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, idx, F.relu(values))
    dense_loss = rec(x, f @ sae.W_dec + sae.b_dec)
    dense_grads = torch.autograd.grad(dense_loss, [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec])
    out = sae(x)
    assert torch.allclose(out.losses["reconstruction"], dense_loss, atol=1e-5)
    assert torch.allclose(sae.encode(x), f) and (sae.encode(x) > 0).sum(-1).max() <= 4
    sparse_grads = torch.autograd.grad(out.losses["reconstruction"], [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec])
    for dense, sparse in zip(dense_grads, sparse_grads):
        assert torch.allclose(dense, sparse, atol=1e-5)


def test_batchtopk_keeps_k_times_batch_and_learns_a_threshold():
    sae = make("batchtopk", threshold_momentum=0.5).train()
    x = data()
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    flat = F.relu(pre).flatten()
    kept = flat.topk(4 * 64).indices
    f = torch.zeros_like(flat).scatter(0, kept, flat[kept]).reshape(pre.shape)
    dense_loss = rec(x, f @ sae.W_dec + sae.b_dec)
    dense_grads = torch.autograd.grad(dense_loss, [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec])
    out = sae(x)
    assert (f > 0).sum() == 4 * 64 and out.l0 == 4.0
    assert (f > 0).sum(-1).max() > 4 > (f > 0).sum(-1).min()  # per token it varies
    assert torch.allclose(out.losses["reconstruction"], dense_loss, atol=1e-5)
    for dense, sparse in zip(dense_grads, torch.autograd.grad(out.losses["reconstruction"],
                                                              [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec])):
        assert torch.allclose(dense, sparse, atol=1e-5)
    first = float(flat[kept].min().detach())
    assert torch.allclose(sae.threshold, torch.full((D_SAE,), first))  # the first batch sets it
    second_x = data(seed=2)
    pre2 = (second_x - sae.b_dec) @ sae.W_enc + sae.b_enc
    second = float(F.relu(pre2).flatten().topk(4 * 64).values.min().detach())
    sae(second_x)
    assert torch.allclose(sae.threshold, torch.full((D_SAE,), 0.5 * first + 0.5 * second))
    sae.eval()  # inference is a JumpReLU with the learned threshold
    pre = sae.pre_activations(x)
    assert torch.equal(sae.encode(x), F.relu(pre) * (pre > sae.threshold))


def test_jumprelu_straight_through_gradients():
    sae = make("jumprelu", jumprelu_bandwidth=0.5)
    x = data()
    pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).detach()
    theta = sae.log_threshold.exp().detach()
    near = ((pre - theta).abs() < 0.25).float()
    assert near.sum() > 10  # some pre-activations fall inside the kernel
    out = sae(x, sparsity_scale=1.0)
    f = pre * (pre > theta)
    assert torch.allclose(out.x_hat, f @ sae.W_dec + sae.b_dec, atol=1e-6)
    assert torch.allclose(out.losses["sparsity"], 0.3 * (pre > theta).float().sum(-1).mean())
    # L0 term: no gradient to the pre-activations, -(1/eps) K(.) to theta (times theta for the log)
    sae.zero_grad()
    out.losses["sparsity"].backward(retain_graph=True)
    expected = 0.3 * (-(1 / 0.5) * near).sum(0) / len(x) * theta
    assert torch.allclose(sae.log_threshold.grad, expected, atol=1e-6)
    assert sae.W_enc.grad is None or sae.W_enc.grad.abs().max() == 0
    # reconstruction term: df/dh = 1[h > theta], df/dtheta = -(theta/eps) K(.)
    sae.zero_grad()
    out.losses["reconstruction"].backward()
    g_f = 2 * (out.x_hat.detach() - x) @ sae.W_dec.detach().T / len(x)
    assert torch.allclose(sae.log_threshold.grad, (g_f * -(theta / 0.5) * near).sum(0) * theta, atol=1e-5)
    assert torch.allclose(sae.b_enc.grad, (g_f * (pre > theta)).sum(0), atol=1e-5)
    assert sae.log_threshold.dtype == torch.float32


# --------------------------------------------------------------------------- AuxK


def test_auxk_reaches_only_dead_latents_and_never_b_dec(assert_auxk_reach):
    sae = make("topk")
    x = data()
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[[3, 7, 11, 20, 21, 30]] = True
    out = sae(x, dead=dead)
    aux = out.losses["auxk"]
    assert_auxk_reach(sae, aux, dead)
    # the value by hand: the top 4 dead pre-activations decode (without b_dec) the detached residual
    with torch.no_grad():
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        masked = pre.masked_fill(~dead, float("-inf"))
        v, i = masked.topk(4, dim=-1)
        predicted = torch.zeros_like(pre).scatter(-1, i, v) @ sae.W_dec
        residual = x - out.x_hat
        expected = (predicted - residual).pow(2).sum(-1).mean() / (residual - residual.mean(0)).pow(2).sum(-1).mean()
    assert torch.allclose(aux, (1 / 32) * min(6 / 4, 1) * expected, atol=1e-6)


def test_auxk_with_no_dead_latents_is_zero():
    sae = make("topk")
    x = data()
    assert sae(x, dead=torch.zeros(D_SAE, dtype=torch.bool)).losses["auxk"] == 0
    pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).detach()
    assert auxk_loss(x, pre, sae.W_enc, sae.b_enc, sae.W_dec, x, torch.ones(D_SAE, dtype=torch.bool), 4, 0.0) == 0


@pytest.mark.parametrize("architecture, overrides", [("relu", {}), ("relu", {"decoder_norm_penalty": False}),
                                                    ("gated", {}), ("jumprelu", {})])
def test_dense_architectures_sparse_path_matches_the_dense_one(architecture, overrides, monkeypatch):
    """Once codes are sparse enough, ReLU, Gated and JumpReLU train on their active entries only: the same
    losses, counts and gradients as the dense computation (JumpReLU's threshold gradients included)."""
    sae = make(architecture, **overrides)
    x = data(256)
    listed = {}  # path -> how many entries the step listed (the sparse path lists them, the dense one does not)
    build = Chosen.from_sorted_flat.__func__
    monkeypatch.setattr(Chosen, "from_sorted_flat", classmethod(
        lambda cls, flat, *shape: listed.__setitem__(path, len(flat)) or build(cls, flat, *shape)))
    runs = {}
    for path, limit in [("dense", 0.0), ("sparse", 1.0)]:
        monkeypatch.setattr(type(sae), "sparse_max_density", limit)
        out = sae(x, sparsity_scale=0.5)
        runs[path] = out, torch.autograd.grad(out.loss, list(sae.parameters()))
    assert "dense" not in listed and 0 < listed["sparse"] < x.shape[0] * D_SAE  # some entries left out, some kept
    (dense, dense_grads), (sparse, sparse_grads) = runs["dense"], runs["sparse"]
    assert torch.allclose(sparse.x_hat, dense.x_hat, atol=1e-5)
    assert dense.losses.keys() == sparse.losses.keys()
    for name in dense.losses:
        assert torch.allclose(sparse.losses[name], dense.losses[name], rtol=1e-5), name
    assert sparse.l0 == dense.l0 and torch.equal(sparse.fire_counts, dense.fire_counts)
    for (name, _), a, b in zip(sae.named_parameters(), sparse_grads, dense_grads):
        assert b.abs().max() > 0, name
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("architecture", ["relu", "gated", "jumprelu"])
def test_sparse_path_gives_the_same_bits_every_time(architecture, monkeypatch):
    """Per-latent vectors read at thousands of entries must sum their gradients in a fixed order (the
    backward of plain indexing does not, on a CPU): the same seed must give the same SAE."""
    monkeypatch.setattr(ARCH_CLASSES[architecture], "sparse_max_density", 1.0)
    sae = create_sae(SAEConfig(architecture=architecture, d_in=128, d_sae=1024, sparsity_coefficient=0.1))
    sae.init_weights(torch.Generator().manual_seed(0))
    x = torch.randn(4096, 128, generator=torch.Generator().manual_seed(1))
    first = torch.autograd.grad(sae(x).loss, list(sae.parameters()))
    for _ in range(3):
        again = torch.autograd.grad(sae(x).loss, list(sae.parameters()))
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_sparse_helpers_on_uneven_rows():
    W_dec = torch.randn(D_SAE, D_IN)
    chosen = Chosen.from_sorted_flat(torch.tensor([5, 2 * D_SAE + 1, 2 * D_SAE + 9]), 3, D_SAE)
    values = torch.tensor([1.0, 2.0, 3.0])
    assert chosen.rows.tolist() == [0, 2, 2] and chosen.cols.tolist() == [5, 1, 9]
    assert chosen.offsets.tolist() == [0, 1, 1]  # the empty middle token starts where the last one does
    out = sparse_decode(values, chosen, W_dec)
    assert torch.allclose(out[0], W_dec[5]) and out[1].abs().max() == 0
    assert torch.allclose(out[2], 2 * W_dec[1] + 3 * W_dec[9])
    # its backward (a sampled matmul for the values, a sum by latent for W_dec) against the dense product
    values, W_dec = values.requires_grad_(), W_dec.requires_grad_()
    dense_code = torch.zeros(3, D_SAE).index_put((chosen.rows, chosen.cols), values)
    grad_out = torch.randn(3, D_IN)
    for a, c in zip(torch.autograd.grad((sparse_decode(values, chosen, W_dec) * grad_out).sum(), [values, W_dec]),
                    torch.autograd.grad(((dense_code @ W_dec) * grad_out).sum(), [values, W_dec])):
        assert torch.allclose(a, c, atol=1e-6)
    x = torch.randn(3, D_IN, requires_grad=True)
    W_enc = torch.randn(D_IN, D_SAE, requires_grad=True)
    b = torch.randn(D_SAE, requires_grad=True)
    pre = (x @ W_enc + b).detach()
    got = chosen_values(pre[chosen.rows, chosen.cols], x, W_enc, b, chosen)
    direct = (x @ W_enc + b)[chosen.rows, chosen.cols]
    weights = torch.tensor([0.3, -1.0, 2.0])
    assert torch.allclose(got, direct)
    for a, c in zip(torch.autograd.grad((got * weights).sum(), [x, W_enc, b]),
                    torch.autograd.grad((direct * weights).sum(), [x, W_enc, b])):
        assert torch.allclose(a, c, atol=1e-6)


# --------------------------------------------------------------------------- raw space and saving


@pytest.mark.parametrize("architecture", ARCHS)
def test_raw_space_copy_reads_raw_activations(architecture):
    sae = make(architecture, k=4).eval()
    if sae.unit_norm_decoder:
        sae.normalize_decoder()
    scale = 0.25
    x = data() * 8
    raw = sae.to_raw_space(scale)
    assert torch.allclose(raw.W_dec.norm(dim=1), torch.ones(D_SAE), atol=1e-5)
    expected_x_hat = sae.decode(sae.encode(x * scale)) / scale
    assert torch.allclose(raw.decode(raw.encode(x)), expected_x_hat, atol=1e-4)
    codes, raw_codes = sae.encode(x * scale), raw.encode(x)
    assert torch.equal(codes > 0, raw_codes > 0)  # the same latents fire; values are in decoder-norm units
    assert torch.allclose(raw_codes, codes * sae.W_dec.norm(dim=1) / scale, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("architecture", ARCHS)
def test_save_and_load_round_trip_exactly(architecture, tmp_path):
    sae = make(architecture).eval()
    frequency = torch.rand(D_SAE, generator=torch.Generator().manual_seed(3))
    path = save_sae(sae, tmp_path / architecture, scale=0.5, sparsity=frequency, extra_metadata={"note": "x"})
    assert sorted(p.name for p in path.iterdir()) == ["cfg.json", "sae_weights.safetensors", "sparsity.safetensors"]
    loaded = load_sae(path)
    raw = sae.to_raw_space(0.5)
    assert type(loaded) is type(sae) and loaded.cfg == sae.cfg
    for name, tensor in raw.saelens_tensors().items():
        assert torch.equal(loaded.saelens_tensors()[name], tensor), name
    x = data()
    assert torch.equal(loaded.encode(x), raw.encode(x)) and torch.equal(loaded.decode(loaded.encode(x)),
                                                                        raw.decode(raw.encode(x)))
    assert torch.allclose(load_sparsity(path), torch.log10(frequency))
    cfg = json.loads((path / "cfg.json").read_text())
    assert cfg["normalize_activations"] == "none" and cfg["apply_b_dec_to_input"] is True
    assert cfg["architecture"] == {"relu": "standard", "batchtopk": "jumprelu"}.get(architecture, architecture)
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    assert cfg["metadata"]["saekit"]["folded_scaling_factor"] == 0.5 and cfg["metadata"]["saekit"]["note"] == "x"
    if architecture == "topk":
        assert cfg["k"] == 4 and cfg["rescale_acts_by_decoder_norm"] is False


def test_saving_over_an_existing_folder_replaces_it(tmp_path):
    save_sae(make("relu"), tmp_path / "s")
    save_sae(make("topk"), tmp_path / "s")
    assert type(load_sae(tmp_path / "s")).__name__ == "TopKSAE"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_loading_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="cfg.json is missing"):
        load_sae(tmp_path)
    path = save_sae(make("relu"), tmp_path / "s")
    cfg = json.loads((path / "cfg.json").read_text())
    (path / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 16, "metadata": {}}))
    with pytest.raises(ValueError, match="a relu SAE with d_in=8, d_sae=16 needs"):
        load_sae(path)
    (path / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "expected_average_only_in"}))
    with pytest.raises(ValueError, match="normalize_activations='expected_average_only_in' is not supported"):
        load_sae(path)
    (path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "matryoshka", "metadata": {}}))
    with pytest.raises(ValueError, match="architecture 'matryoshka' is not one saekit reads"):
        load_sae(path)


# --------------------------------------------------------------------------- bad configurations


@pytest.mark.parametrize("overrides, message", [
    (dict(architecture="topk", k=64), "topk needs 0 < k <= d_sae \\(32\\), got k=64"),
    (dict(architecture="batchtopk", k=None), "batchtopk needs 0 < k <= d_sae"),
    (dict(architecture="relu", sparsity_coefficient=-1.0), "must not be negative"),
    (dict(architecture="topk", k=4, aux_coefficient=-0.1), "must not be negative"),
    (dict(architecture="swish"), "architecture must be one of"),
    (dict(architecture="relu", d_sae=0), "d_in and d_sae must be positive"),
    (dict(architecture="jumprelu", jumprelu_bandwidth=0.0), "jumprelu_bandwidth"),
])
def test_bad_configurations(overrides, message):
    with pytest.raises(ValueError, match=message):
        SAEConfig(**{"d_in": D_IN, "d_sae": D_SAE, **overrides})


def test_batchtopk_candidate_shortcuts_are_exact(monkeypatch):
    """BatchTopK finds the batch's top k x n_tokens entries through one of two shortcuts (the entries above
    0.9 x the last cutoff; each token's `width` largest) or a full topk: the same increasing positions
    whichever runs, entries tied at the cutoff kept first come first."""
    sae = make("batchtopk", k=2)
    ranked = []  # how many dimensions each topk call had: the per-token shortcut ranks [n_tokens, d_sae]
    topk = torch.Tensor.topk
    monkeypatch.setattr(torch.Tensor, "topk", lambda t, *a, **kw: ranked.append(t.dim()) or topk(t, *a, **kw))
    generator = torch.Generator().manual_seed(4)
    for case in ("plain", "crowded", "tied"):
        acts = torch.relu(torch.randn(64, D_SAE, generator=generator) * 3)
        if case == "crowded":  # one token with more large entries than its candidates forces the full topk
            acts[0, :20] += 50
        if case == "tied":  # many entries equal to the cutoff: the first ones (by position) are kept
            acts = acts.round()
        flat = acts.reshape(-1)
        cutoff = float(topk(flat, 2 * 64).values.min())
        above, tied = (flat > cutoff).nonzero().squeeze(1), (flat == cutoff).nonzero().squeeze(1)
        exact = torch.cat([above, tied[:2 * 64 - len(above)]]).sort().values
        assert case != "tied" or len(tied) > 2 * 64 - len(above) > 0
        # no cutoff yet; a good one; too high (too few entries above it); too low (too many)
        for last_cutoff, shortcut in [(None, False), (cutoff / 0.95, True), (2 * cutoff, False), (0.0, False)]:
            sae.__dict__.pop("_cutoff", None)
            if last_cutoff is not None:
                sae._cutoff = 0.9 * last_cutoff
            sae._width = 8
            ranked.clear()
            assert torch.equal(sae._batch_top(acts), exact), (case, last_cutoff)
            assert (2 not in ranked) is shortcut or case == "tied", (case, last_cutoff, ranked)
            assert sae._cutoff == pytest.approx(0.9 * cutoff)
