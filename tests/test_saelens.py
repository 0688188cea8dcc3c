"""SAELens interop: SAELens loads saekit's saved SAEs and computes the same codes and reconstructions,
and saekit imports SAEs that SAELens saved (v6 and pre-6.0 configs) with SAELens's outputs.

The import tests read tests/fixtures/saelens (written by SAELens itself, see make_saelens_fixtures.py)
and run without sae-lens; the tests marked `needs_saelens` run when it is installed (the `sae-lens` extra).
"""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saekit.sae import SAEConfig, create_sae
from saekit.sae.io import load_sae, save_sae

FIXTURES = Path(__file__).parent / "fixtures" / "saelens"
EXPECTED = load_file(str(FIXTURES / "expected.safetensors"))
FOLDERS = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
SAEKIT_ARCHITECTURE = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}
TOLERANCE = 1e-5
D_IN, D_SAE = 8, 16

needs_saelens = pytest.mark.skipif(importlib.util.find_spec("sae_lens") is None, reason="sae-lens is not installed")


def outputs(sae, x):
    """encode(x), dense, and decode(encode(x)) of a saekit or a SAELens SAE."""
    with torch.no_grad():
        code = sae.encode(x)
        code = code.to_dense() if code.is_sparse else code
        return code, sae.decode(code)


def assert_same_outputs(got, expected, what):
    for name, a, b in zip(("encode", "decode"), got, expected):
        difference = (a - b).abs().max().item()
        assert difference <= TOLERANCE, f"{what}: {name} differs by {difference:.2e}"


def random_saekit_sae(architecture, seed=0):
    cfg = SAEConfig(architecture=architecture, d_in=D_IN, d_sae=D_SAE, k=4, jumprelu_init_threshold=0.2,
                    hook_name="blocks.2.hook_resid_post", metadata={"model_name": "nanochat-d6"})
    sae = create_sae(cfg).eval()
    generator = torch.Generator().manual_seed(seed)
    sae.init_weights(generator)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=generator))
        if architecture in ("batchtopk", "matryoshka"):
            sae.threshold.fill_(0.3)  # as learned in training
    return sae


# --------------------------------------------------------------------------- SAELens-saved SAEs into saekit


@pytest.mark.parametrize("name", FOLDERS)
def test_saelens_saved_sae_imports_with_saelens_outputs(name):
    sae = load_sae(FIXTURES / name)
    raw = json.loads((FIXTURES / name / "cfg.json").read_text())
    architecture = raw.get("architecture", "standard")
    if raw.get("activation_fn_str") == "topk":
        architecture = "topk"
    assert sae.cfg.architecture == SAEKIT_ARCHITECTURE[architecture]
    assert sae.cfg.hook_name == "blocks.3.hook_resid_post" and sae.cfg.metadata["model_name"] == "gpt2-small"
    if architecture == "topk":
        assert sae.cfg.k == 4
    x = EXPECTED["input"]
    expected = (EXPECTED[f"{name}.encode"], EXPECTED[f"{name}.decode"])
    assert (expected[0] > 0).any() and (expected[0] == 0).any()
    assert_same_outputs(outputs(sae, x), expected, name)


@pytest.mark.parametrize("name", FOLDERS)
def test_imported_sae_saves_as_saekit_and_keeps_its_outputs(name, tmp_path):
    sae = load_sae(FIXTURES / name)
    path = save_sae(sae, tmp_path / name)
    again = load_sae(path)
    saved = json.loads((path / "cfg.json").read_text())
    assert again.cfg == sae.cfg and "saekit" in saved["metadata"]
    assert saved["metadata"].get("neuronpedia_id") == sae.cfg.metadata.get("neuronpedia_id")
    x = EXPECTED["input"]
    code, x_hat = outputs(again, x)
    assert (x_hat - EXPECTED[f"{name}.decode"]).abs().max() <= TOLERANCE
    # saved decoder rows have unit norm where that changes nothing: a code times its row's norm is what is kept
    along_directions = code * again.W_dec.norm(dim=1)
    assert (along_directions - EXPECTED[f"{name}.encode"] * sae.W_dec.norm(dim=1)).abs().max() <= TOLERANCE


def copy_fixture(name, tmp_path, cfg_changes=None, tensor_changes=None):
    path = shutil.copytree(FIXTURES / name, tmp_path / name)
    if cfg_changes is not None:
        cfg = json.loads((path / "cfg.json").read_text())
        (path / "cfg.json").write_text(json.dumps({**cfg, **cfg_changes}))
    if tensor_changes is not None:
        tensors = load_file(str(path / "sae_weights.safetensors"))
        save_file({**tensors, **tensor_changes}, str(path / "sae_weights.safetensors"))
    return path


def test_legacy_finetuning_scaling_factor_folds_into_the_decoder(tmp_path):
    # SAELens < 6 decoded (f * s) @ W_dec + b_dec; SAELens 6 cannot load such an SAE at all
    scaling = torch.rand(D_SAE, generator=torch.Generator().manual_seed(5)) + 0.5
    path = copy_fixture("legacy_standard", tmp_path, {"finetuning_scaling_factor": True}, {"scaling_factor": scaling})
    stored = load_file(str(path / "sae_weights.safetensors"))
    x = EXPECTED["input"]
    code = EXPECTED["legacy_standard.encode"]
    by_hand = (code * scaling) @ stored["W_dec"] + stored["b_dec"]
    assert_same_outputs(outputs(load_sae(path), x), (code, by_hand), "scaled")
    assert not torch.allclose(by_hand, EXPECTED["legacy_standard.decode"], atol=1e-3)
    no_flag = copy_fixture("legacy_standard", tmp_path / "b", None, {"scaling_factor": scaling})
    with pytest.raises(ValueError, match="scaling_factor that is not all ones, but the config's finetuning"):
        load_sae(no_flag)


def test_jumprelu_threshold_at_or_below_zero_acts_as_a_relu(tmp_path):
    stored = load_file(str(FIXTURES / "jumprelu" / "sae_weights.safetensors"))
    threshold = stored["threshold"].clone()
    threshold[:4] = torch.tensor([0.0, -1.0, 0.0, -0.5])
    sae = load_sae(copy_fixture("jumprelu", tmp_path, None, {"threshold": threshold}))
    x = EXPECTED["input"]
    pre = (x - stored["b_dec"]) @ stored["W_enc"] + stored["b_enc"]
    expected = torch.relu(pre) * (pre > threshold)  # SAELens's JumpReLU
    assert (expected[:, :4] > 0).any()
    assert_same_outputs(outputs(sae, x), (expected, expected @ stored["W_dec"] + stored["b_dec"]), "threshold")


@pytest.mark.parametrize("changes, message", [
    ({"activation_fn_str": "tanh-relu"}, "activation_fn 'tanh-relu' is not one saekit reads"),
    ({"activation_fn_str": "topk", "activation_fn_kwargs": {}}, "expected integer k"),
    ({"normalize_activations": True}, "normalize_activations='expected_average_only_in' is not supported"),
    ({"normalize_activations": "layer_norm"}, "normalize_activations='layer_norm' is not supported"),
    ({"architecture": "abstopk"}, "architecture 'abstopk' is not one saekit reads"),
    ({"d_sae": "16"}, "expected integer d_sae"),
])
def test_unreadable_legacy_configs_say_why(changes, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        load_sae(copy_fixture("legacy_standard", tmp_path, changes))


def test_v6_configs_refuse_what_they_cannot_fold(tmp_path):
    with pytest.raises(ValueError, match="normalize_activations='constant_norm_rescale' is not supported"):
        load_sae(copy_fixture("standard", tmp_path, {"normalize_activations": "constant_norm_rescale"}))
    with pytest.raises(ValueError, match="expected integer k"):
        load_sae(copy_fixture("topk", tmp_path / "b", {"k": None}))
    not_an_object = copy_fixture("gated", tmp_path / "c")
    (not_an_object / "cfg.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object whose metadata is an object; found list"):
        load_sae(not_an_object)
    (not_an_object / "cfg.json").write_text(json.dumps({"d_in": 8, "d_sae": 16, "metadata": [1]}))
    with pytest.raises(ValueError, match=r"found dict with metadata \[1\]"):
        load_sae(not_an_object)


# --------------------------------------------------------------------------- with sae-lens installed


@needs_saelens
@pytest.mark.parametrize("architecture", ["relu", "topk", "batchtopk", "matryoshka", "gated", "jumprelu"])
def test_saelens_loads_saekit_saes_with_the_same_outputs(architecture, tmp_path):
    from sae_lens import SAE

    sae = random_saekit_sae(architecture)
    path = save_sae(sae, tmp_path / architecture, scale=0.5, sparsity=torch.full((D_SAE,), 0.1))
    theirs = SAE.load_from_disk(path)
    ours = load_sae(path)
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(1)) * 3
    mine = outputs(ours, x)
    assert (mine[0] > 0).any() and (mine[0] == 0).any()
    assert_same_outputs(outputs(theirs, x), mine, architecture)
    assert_same_outputs(mine, outputs(sae.to_raw_space(0.5), x), f"{architecture} before saving")
    assert theirs.cfg.metadata.hook_name == "blocks.2.hook_resid_post"


@needs_saelens
@pytest.mark.parametrize("name", FOLDERS)
def test_fixtures_match_the_installed_saelens(name):
    from sae_lens import SAE

    theirs = SAE.load_from_disk(FIXTURES / name)
    assert_same_outputs(outputs(theirs, EXPECTED["input"]), (EXPECTED[f"{name}.encode"], EXPECTED[f"{name}.decode"]),
                        name)


@needs_saelens
@pytest.mark.parametrize("architecture, options", [
    ("standard", {}), ("topk", {"k": 4}), ("topk", {"k": 4, "rescale_acts_by_decoder_norm": True}),
    ("jumprelu", {"apply_b_dec_to_input": False}), ("gated", {}), ("gated", {"apply_b_dec_to_input": False}),
])
def test_saekit_imports_what_the_installed_saelens_saves(architecture, options, tmp_path):
    from sae_lens import SAE

    theirs = SAE.from_dict({"architecture": architecture, "d_in": D_IN, "d_sae": D_SAE, **options,
                            "metadata": {"hook_name": "blocks.1.hook_resid_pre"}})
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
            if name == "threshold":
                p.abs_()
    theirs.save_model(tmp_path / "sae")
    ours = load_sae(tmp_path / "sae")
    x = torch.randn(64, D_IN, generator=generator) * 2
    expected = outputs(theirs, x)
    assert (expected[0] > 0).any() and (expected[0] == 0).any()
    assert_same_outputs(outputs(ours, x), expected, f"{architecture} {options}")
    assert ours.cfg.hook_name == "blocks.1.hook_resid_pre"
