"""saekit loads real nanochat checkpoints exactly: both eras' reference outputs, layouts, bad input."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from saekit.nanochat import GPT, CheckpointError, GPTConfig, generate, load_model, save_checkpoint
from saekit.tokenizer import TokenizerError

FIXTURES = Path(__file__).parent / "fixtures" / "nanochat"
ERAS = ["current-2026-07", "early-2025-10"]


def reference(era):
    return torch.load(FIXTURES / era / "reference_outputs.pt", weights_only=True)


def logits_and_blocks(model, ids):
    outputs = {}
    handles = [block.register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(f"h.{n}", o))
               for n, block in enumerate(model.transformer.h)]
    with torch.no_grad():
        logits = model(ids)
    for h in handles:
        h.remove()
    return logits, outputs


@pytest.mark.parametrize("era", ERAS)
def test_reproduces_nanochat_logits_and_block_outputs(era):
    model, tokenizer = load_model(FIXTURES / era)
    ref = reference(era)
    logits, blocks = logits_and_blocks(model, ref["input_ids"])
    assert (logits - ref["logits"]).abs().max() < 1e-4
    for name, expected in ref["block_outputs"].items():
        assert (blocks[name] - expected).abs().max() < 1e-4, name
    with torch.no_grad():
        loss = model(ref["input_ids"][:, :-1], targets=ref["input_ids"][:, 1:])
    assert abs(loss.item() - ref["loss"]) < 1e-5
    assert tokenizer.encode(ref["tokenizer_sample_text"]) == ref["tokenizer_sample_ids"]
    assert tokenizer.bos_id == ref["bos_id"]


def test_october_2025_config_matches_the_detected_early_era():
    early, _ = load_model(FIXTURES / "early-2025-10")
    assert GPTConfig.october_2025(**early.config.nanochat_config()) == early.config


def test_eras_are_told_apart_by_their_keys():
    current, _ = load_model(FIXTURES / "current-2026-07")
    early, _ = load_model(FIXTURES / "early-2025-10")
    assert (current.config.smear, current.config.rotary_base, current.config.qk_scale) == (True, 100000.0, 1.2)
    assert (early.config.smear, early.config.rotary_base, early.config.rotary_bf16) == (False, 10000.0, True)
    assert early.config.window_pattern == "L"  # missing in the meta json, patched as nanochat does


@pytest.mark.parametrize("era", ERAS)
def test_module_names_are_nanochats(era):
    model, _ = load_model(FIXTURES / era)
    names = dict(model.named_modules())
    for i in range(model.config.n_layer):
        for suffix in ("", ".attn", ".attn.c_q", ".attn.c_proj", ".mlp", ".mlp.c_fc", ".mlp.c_proj"):
            assert f"transformer.h.{i}{suffix}" in names
    saved = torch.load(FIXTURES / era / "base_checkpoints/d4/model_000123.pt", weights_only=True)
    assert set(model.state_dict()) == set(saved)


@pytest.mark.parametrize("era", ERAS)
def test_kv_cached_greedy_generation_equals_full_forward_decoding(era):
    model, _ = load_model(FIXTURES / era)
    prompt = reference(era)["input_ids"][0, :150].tolist()
    cached = list(generate(model, prompt, 60))  # runs past the 128-token sliding window
    full = list(generate(model, prompt, 60, use_cache=False))
    assert cached == full and len(cached) == 60


@pytest.mark.parametrize("era", ERAS)
def test_seeded_sampling_is_reproducible_and_matches_uncached(era):
    model, _ = load_model(FIXTURES / era)
    prompt = reference(era)["input_ids"][0, :20].tolist()
    a = list(generate(model, prompt, 30, temperature=1.0, top_k=20, seed=7))
    assert a == list(generate(model, prompt, 30, temperature=1.0, top_k=20, seed=7))
    assert a == list(generate(model, prompt, 30, temperature=1.0, top_k=20, seed=7, use_cache=False))
    assert a != list(generate(model, prompt, 30, temperature=1.0, top_k=20, seed=8))
    top1 = list(generate(model, prompt, 30, temperature=1.0, top_k=1, seed=8))
    assert top1 == list(generate(model, prompt, 30))  # top-1 sampling is greedy


def test_generation_stops_at_a_stop_token():
    model, _ = load_model(FIXTURES / "current-2026-07")
    prompt = reference("current-2026-07")["input_ids"][0, :20].tolist()
    free = list(generate(model, prompt, 30))
    stopped = list(generate(model, prompt, 30, stop_tokens={free[5]}))
    assert stopped == free[: free.index(free[5]) + 1]


def test_kv_cache_overflow_is_a_clear_error():
    model, _ = load_model(FIXTURES / "current-2026-07")
    cache = model.new_kv_cache(1, 4)
    with pytest.raises(ValueError, match="KV cache holds 4 positions"):
        model(torch.zeros(1, 6, dtype=torch.long), kv_cache=cache)


# --------------------------------------------------------------------------- checkpoint variants


def copy_base_dir(era, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(FIXTURES / era, base, ignore=shutil.ignore_patterns("reference_outputs.pt"))
    for p in base.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return base


def rewrite_state_dict(checkpoint_dir, change):
    path = checkpoint_dir / "model_000123.pt"
    state = torch.load(path, weights_only=True)
    torch.save(change(state), path)


def test_compiled_prefix_and_bfloat16_tensors_load(tmp_path):
    base = copy_base_dir("current-2026-07", tmp_path)
    ckpt = base / "base_checkpoints" / "d4"
    rewrite_state_dict(ckpt, lambda sd: {"_orig_mod." + k: v.bfloat16() if "wte" in k or "value_embeds" in k else v
                                         for k, v in sd.items()})
    model, _ = load_model(ckpt)
    assert model.transformer.wte.weight.dtype == torch.float32
    original, _ = load_model(FIXTURES / "current-2026-07")
    rounded = original.transformer.wte.weight.bfloat16().float()
    assert torch.equal(model.transformer.wte.weight, rounded)


def test_padded_vocab_is_sliced_off(tmp_path):
    config = GPTConfig(sequence_len=64, vocab_size=500, n_layer=2, n_head=2, n_kv_head=1, n_embd=32)
    assert config.padded_vocab_size == 512
    model = GPT(config)
    model.init_weights(torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    save_checkpoint(model, tmp_path / "d2", 5)
    state = torch.load(tmp_path / "d2" / "model_000005.pt", weights_only=True)
    assert state["transformer.wte.weight"].shape[0] == 512
    shutil.copy(FIXTURES / "current-2026-07/tokenizer/tokenizer.pkl", tmp_path / "d2")
    with pytest.raises(CheckpointError, match="tokenizer vocabulary \\(512 tokens\\) does not match .* \\(500\\)"):
        load_model(tmp_path / "d2")
    from saekit.nanochat import build_model
    loaded = build_model(state, json.loads((tmp_path / "d2" / "meta_000005.json").read_text())["model_config"])
    ids = torch.randint(0, 500, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = loaded(ids)
        assert logits.shape == (1, 20, 500)
        assert torch.equal(logits, model.eval()(ids))


def test_missing_window_pattern_means_full_context(tmp_path):
    base = copy_base_dir("current-2026-07", tmp_path)
    meta_path = base / "base_checkpoints/d4/meta_000123.json"
    meta = json.loads(meta_path.read_text())
    del meta["model_config"]["window_pattern"]
    meta_path.write_text(json.dumps(meta))
    model, _ = load_model(base)
    assert model.config.window_pattern == "L"
    full, _ = load_model(FIXTURES / "current-2026-07", overrides={"window_pattern": "L"})
    ids = reference("current-2026-07")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids), full(ids))
        assert not torch.allclose(model(ids), reference("current-2026-07")["logits"], atol=1e-3)


def test_base_dir_defaults_to_largest_depth_and_last_step(tmp_path):
    base = copy_base_dir("current-2026-07", tmp_path)
    checkpoints = base / "base_checkpoints"
    shutil.copytree(checkpoints / "d4", checkpoints / "d12")
    shutil.copytree(checkpoints / "d4", checkpoints / "d3")
    for ext in ("pt", "json"):  # d12 gets a later step, with slightly different weights
        shutil.copy(checkpoints / f"d12/{'model' if ext == 'pt' else 'meta'}_000123.{ext}",
                    checkpoints / f"d12/{'model' if ext == 'pt' else 'meta'}_000200.{ext}")
    rewrite_later = checkpoints / "d12" / "model_000200.pt"
    sd = torch.load(rewrite_later, weights_only=True)
    sd["lm_head.weight"] = sd["lm_head.weight"] * 2
    torch.save(sd, rewrite_later)

    model, _ = load_model(base)
    assert model.name == "nanochat-d12" and torch.equal(model.lm_head.weight, sd["lm_head.weight"])
    older, _ = load_model(base, step=123)
    assert not torch.equal(older.lm_head.weight, model.lm_head.weight)
    small, _ = load_model(base, model_tag="d3")
    assert small.name == "nanochat-d3"
    (base / "chatsft_checkpoints").mkdir()
    shutil.copytree(checkpoints / "d4", base / "chatsft_checkpoints" / "d4")
    sft, _ = load_model(base, source="sft")
    assert sft.name == "nanochat-d4"
    with pytest.raises(FileNotFoundError, match="no step 999 .* available steps: \\[123, 200\\]"):
        load_model(base, step=999)
    with pytest.raises(FileNotFoundError, match="no model 'd99'"):
        load_model(base, model_tag="d99")


# --------------------------------------------------------------------------- bad input


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_directory_without_checkpoints(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match="no model_<step>.pt files and no base_checkpoints/ .*notes.txt"):
        load_model(tmp_path)
    (tmp_path / "base_checkpoints" / "d4").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no model_<step>.pt files"):
        load_model(tmp_path)


def test_tokenizer_vocabulary_must_match(tmp_path):
    import tiktoken

    from saekit.tokenizer import SPECIAL_TOKENS
    ranks = {bytes([i]): i for i in range(256)}
    enc = tiktoken.Encoding("small", pat_str=r"\S+|\s+", mergeable_ranks=ranks,
                            special_tokens={t: 256 + i for i, t in enumerate(SPECIAL_TOKENS)})
    (tmp_path / "tokenizer.pkl").write_bytes(pickle.dumps(enc))
    with pytest.raises(CheckpointError, match="tokenizer vocabulary \\(265 tokens\\) does not match .*\\(512\\)"):
        load_model(FIXTURES / "current-2026-07", tokenizer=tmp_path)


@pytest.mark.parametrize("change, message", [
    (lambda sd: {**sd, "transformer.extra.weight": torch.zeros(2)}, "unexpected keys \\['transformer.extra.weight'\\]"),
    (lambda sd: {k: v for k, v in sd.items() if k != "transformer.h.2.mlp.c_fc.weight"},
     "missing keys \\['transformer.h.2.mlp.c_fc.weight'\\]"),
    (lambda sd: {**sd, "transformer.h.0.mlp.c_fc.weight": torch.zeros(8, 64)},
     "transformer.h.0.mlp.c_fc.weight: expected \\(256, 64\\), found \\(8, 64\\)"),
])
def test_state_dict_key_and_shape_mismatches(tmp_path, change, message):
    base = copy_base_dir("current-2026-07", tmp_path)
    rewrite_state_dict(base / "base_checkpoints/d4", change)
    with pytest.raises(CheckpointError, match=message):
        load_model(base)


class Boom:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/saekit-pickle-was-executed"),))


def test_tokenizer_pickle_with_anything_else_is_refused(tmp_path):
    marker = Path("/tmp/saekit-pickle-was-executed")
    marker.unlink(missing_ok=True)
    (tmp_path / "tokenizer.pkl").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(TokenizerError, match="refusing to unpickle pathlib.*may only contain a tiktoken.core.Encoding"):
        load_model(FIXTURES / "current-2026-07", tokenizer=tmp_path)
    assert not marker.exists()
    (tmp_path / "tokenizer.pkl").write_bytes(pickle.dumps({"not": "an encoding"}))
    with pytest.raises(TokenizerError, match="holds a dict, expected a tiktoken.core.Encoding"):
        load_model(FIXTURES / "current-2026-07", tokenizer=tmp_path)


def test_model_file_that_is_not_a_weights_only_state_dict(tmp_path):
    base = copy_base_dir("current-2026-07", tmp_path)
    path = base / "base_checkpoints/d4/model_000123.pt"
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError, match="cannot read .*model_000123.pt as a weights-only state dict"):
        load_model(base)


def test_broken_meta_json(tmp_path):
    base = copy_base_dir("current-2026-07", tmp_path)
    (base / "base_checkpoints/d4/meta_000123.json").write_text('{"step": 123')
    with pytest.raises(CheckpointError, match="not a nanochat meta json with a model_config"):
        load_model(base)
    (base / "base_checkpoints/d4/meta_000123.json").write_text(json.dumps({"model_config": {"n_layer": 4, "depth": 4}}))
    with pytest.raises(CheckpointError, match="keys saekit does not know: \\['depth'\\]"):
        load_model(base)


def test_save_checkpoint_round_trip_in_nanochat_layout(tmp_path):
    model, tokenizer = load_model(FIXTURES / "current-2026-07")
    path = save_checkpoint(model, tmp_path / "base_checkpoints" / "d4", 7, {"note": "copy"})
    assert path.name == "model_000007.pt" and not list(tmp_path.rglob("*.tmp"))
    meta = json.loads((path.parent / "meta_000007.json").read_text())
    assert meta["model_config"] == json.loads((FIXTURES / "current-2026-07/base_checkpoints/d4/meta_000123.json")
                                              .read_text())["model_config"]
    tokenizer.save(tmp_path / "tokenizer")
    again, _ = load_model(tmp_path)
    ids = reference("current-2026-07")["input_ids"]
    with torch.no_grad():
        assert torch.equal(again(ids), model(ids))
