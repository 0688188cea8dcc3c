"""The embedded default model: nanochat layout, small, really trained, and reproducible."""

import json
from dataclasses import asdict
from pathlib import Path

import torch

import saekit
from saekit.capabilities import run_probes
from saekit.nanochat import DEFAULT_MODEL_DIR
from saekit.pretrain import PretrainConfig, describe_training, held_out_loss, train_default_model

ROOT = Path(__file__).parents[1]


INTERMEDIATE_STEPS = [50, 150, 500]


def meta(step: int = 2500):
    return json.loads((DEFAULT_MODEL_DIR / f"base_checkpoints/d6/meta_{step:06d}.json").read_text())


def test_layout_and_size():
    files = sorted(p.relative_to(DEFAULT_MODEL_DIR).as_posix() for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file())
    checkpoints = [f"base_checkpoints/d6/{kind}_{step:06d}.{ext}" for step in [*INTERMEDIATE_STEPS, 2500]
                   for kind, ext in (("meta", "json"), ("model", "pt"))]
    assert files == sorted(checkpoints + ["tokenizer/token_bytes.pt", "tokenizer/tokenizer.pkl"])
    final = [f for f in files if "_000" not in f or "002500" in f]
    assert sum((DEFAULT_MODEL_DIR / f).stat().st_size for f in final) <= 10 * 2**20
    assert sum((DEFAULT_MODEL_DIR / f).stat().st_size for f in files) <= 20 * 2**20  # intermediates in bfloat16


def test_intermediate_checkpoints_come_from_the_same_run():
    final = meta()["saekit"]["pretrain"]
    losses = []
    for step in INTERMEDIATE_STEPS:
        info = meta(step)["saekit"]
        assert info["intermediate"] and info["stored_dtype"] == "bfloat16"
        assert {k: v for k, v in info["pretrain"].items() if k != "keep_every"} == \
            {k: v for k, v in final.items() if k != "keep_every"}
        model, tokenizer = saekit.load_model(step=step)
        assert next(model.parameters()).dtype == torch.float32  # bfloat16 on disk, float32 in memory
        loss = held_out_loss(model, tokenizer)
        assert abs(loss - info["held_out_loss"]) < 1e-3
        losses.append(loss)
    assert losses == sorted(losses, reverse=True) and losses[-1] > meta()["saekit"]["held_out_loss"]
    assert saekit.nanochat.checkpoint_steps() == [*INTERMEDIATE_STEPS, 2500]


def test_current_era_architecture(default):
    model, tokenizer = default
    cfg = model.config
    assert (cfg.n_layer, cfg.n_embd, cfg.vocab_size, tokenizer.vocab_size) == (6, 128, 1024, 1024)
    assert cfg.smear and cfg.backout and cfg.value_embeds and cfg.lambdas and cfg.window_pattern == "SSSL"
    assert model.name == "nanochat-tinyworld"


def test_made_by_the_current_training_defaults():
    recorded = meta()["saekit"]["pretrain"]
    current = asdict(PretrainConfig())
    assert {k: current[k] for k in recorded} == recorded


def test_capability_probes_pass(default):
    model, tokenizer = default
    results = run_probes(model, tokenizer, n=40, seed=1)  # other prompts than the recorded run's
    assert set(results) == {"weekday", "addition", "close_quote", "chat_category"}
    for name, r in results.items():
        assert r["accuracy"] >= 0.9, (name, r["failures"])


def test_recorded_numbers_are_reproduced(default):
    model, tokenizer = default
    info = meta()["saekit"]
    assert abs(held_out_loss(model, tokenizer, info["pretrain"]["eval_rows"]) - info["held_out_loss"]) < 1e-3
    probes = run_probes(model, tokenizer)
    assert {k: round(v["accuracy"], 4) for k, v in probes.items()} == info["probes"]
    assert describe_training(meta()) in (ROOT / "docs" / "default_model.md").read_text()


def test_training_is_deterministic(tmp_path):
    cfg = PretrainConfig(vocab_size=300, tokenizer_docs=300, n_layer=2, n_embd=32, n_head=2, n_kv_head=1,
                         sequence_len=64, batch_rows=4, steps=12, warmup_steps=3, eval_rows=2, keep_every=5)
    first = train_default_model(tmp_path / "a", cfg, progress=False)
    second = train_default_model(tmp_path / "b", cfg, progress=False)
    assert first["saekit"]["loss_history"] == second["saekit"]["loss_history"]
    for name in ["model_000005.pt", "model_000010.pt", "model_000012.pt"]:
        a = torch.load(tmp_path / "a/base_checkpoints/d2" / name, weights_only=True)
        b = torch.load(tmp_path / "b/base_checkpoints/d2" / name, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a)
    tokenizer_a, tokenizer_b = (tmp_path / run / "tokenizer/tokenizer.pkl" for run in "ab")
    assert tokenizer_a.read_bytes() == tokenizer_b.read_bytes()
    loss = first["saekit"]["loss_history"]
    assert loss[-1] < loss[0]
    model, tokenizer = saekit.load_model(tmp_path / "a")
    assert model.config.n_layer == 2 and tokenizer.vocab_size == 300
