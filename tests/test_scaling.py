"""The scaling planner's counts against real models, real stores and torch's own FLOP counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import saekit
from saekit.hooks import run_until
from saekit.sae import SAEConfig, create_sae
from saekit.scaling import (
    attention_flops_per_token,
    forward_flops_per_token,
    model_parameters,
    nanochat_config,
    plan_run,
    sae_parameters,
)


def test_parameter_counts_match_real_models(default):
    model, _ = default
    with torch.device("meta"):
        d20 = saekit.GPT(nanochat_config(20))
    for m in (model, d20):
        real = m.parameter_counts()["total"]
        assert model_parameters(m.config) == pytest.approx(real, rel=1e-4)  # scalars and gates left out
    assert d20.config.n_embd == 1280 and d20.config.n_head == 10
    sae = create_sae(SAEConfig(architecture="topk", d_in=128, d_sae=512, k=8))
    assert sae_parameters(128, 512) == sum(p.numel() for p in sae.parameters())


def test_matrix_flops_match_torch_flop_counter(default):
    model, _ = default
    ids = torch.randint(0, 1000, (2, 64), generator=torch.Generator().manual_seed(0))
    attention = attention_flops_per_token(model.config, 64)  # FlopCounterMode does not count the attention kernel
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(ids)
    per_token = counter.get_total_flops() / ids.numel()
    expected = forward_flops_per_token(model.config, context=64) - model.config.n_layer * attention
    assert per_token == pytest.approx(expected, rel=1e-3)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        run_until(model, ids, "blocks.3.hook_resid_post")  # collection stops after the hooked block
    expected = forward_flops_per_token(model.config, layers=4, context=64, logits=False) - 4 * attention
    assert counter.get_total_flops() / ids.numel() == pytest.approx(expected, rel=1e-3)


def test_store_bytes_are_exact(default, tmp_path):
    model, tokenizer = default
    store = saekit.collect_activations(model, tokenizer, "blocks.3.hook_resid_post", 5_000, tmp_path / "s",
                                       dtype="bfloat16", progress=False)
    written = sum(f.stat().st_size for f in (tmp_path / "s").rglob("blocks.3.hook_resid_post.bin"))
    plan = plan_run(model.config, 3, 1024, collect_tokens=len(store), store_dtype="bfloat16")
    assert plan.stages[0].disk_bytes == written


def test_plan_table_and_errors():
    plan = plan_run(nanochat_config(20), 10, 16384, collect_tokens=10_000_000)
    table = plan.table(4e14)
    assert [s.name for s in plan.stages] == ["collect", "train", "eval", "dashboard"] and "total" in table
    dense = plan_run(nanochat_config(20), 10, 16384, k=None, collect_tokens=10_000_000)
    assert dense.stages[1].flops > 5 * plan.stages[1].flops  # sparse decoding: TopK trains far cheaper
    with pytest.raises(ValueError, match="layer must be in"):
        plan_run(nanochat_config(20), 20, 1024)
    with pytest.raises(ValueError, match="store_dtype"):
        plan_run(nanochat_config(20), 1, 1024, store_dtype="int8")
