"""The `saekit` command line."""

import json

import pytest
import torch

from saekit.cli import main
from saekit.sae import SAEConfig, create_sae
from saekit.sae.io import save_sae
from saekit.world import CONCEPTS, label_text


def test_generate_writes_a_story_and_chat_answers(capsys):
    main(["generate"])
    out = capsys.readouterr().out
    assert "model: nanochat-tinyworld" in out
    assert "[story] Once upon a time," in out and "[chat] user: Name a bird." in out
    bird_answer, sum_answer = [part.split("\n")[0] for part in out.split("assistant:")[1:]]
    assert "bird" in {concept for _, _, concept in label_text(bird_answer)}
    assert "7" in sum_answer


def test_generate_with_a_prompt_and_sampling_is_reproducible(capsys):
    args = ["generate", "--prompt", "After Monday comes", "--max-tokens", "3"]
    main(args)
    assert "[story] After Monday comes Tuesday" in capsys.readouterr().out
    sampled = args + ["--temperature", "1.0", "--top-k", "10", "--seed", "3"]
    main(sampled)
    first = capsys.readouterr().out
    main(sampled)
    assert capsys.readouterr().out == first


def test_generate_on_a_real_nanochat_checkpoint(capsys):
    main(["generate", "--model", "tests/fixtures/nanochat/early-2025-10", "--max-tokens", "5"])
    assert "model: nanochat-d4" in capsys.readouterr().out


def test_probe(capsys):
    main(["probe", "--n", "7"])
    out = capsys.readouterr().out
    assert "weekday" in out and "chat_category" in out


def test_errors_are_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match="saekit generate: error: .*does not exist"):
        main(["generate", "--model", str(tmp_path / "missing")])
    (tmp_path / "base_checkpoints").mkdir()
    with pytest.raises(SystemExit, match="already holds checkpoints; pass --force"):
        main(["train-model", "--out", str(tmp_path)])


def saved_sae(path, d_in=128, hook="blocks.3.hook_resid_post"):
    sae = create_sae(SAEConfig(architecture="topk", d_in=d_in, d_sae=64, k=4, hook_name=hook))
    sae.init_weights(torch.Generator().manual_seed(0))
    return save_sae(sae, path)


def test_eval_writes_a_json_report(tmp_path, capsys):
    sae_dir = saved_sae(tmp_path / "sae")
    main(["eval", str(sae_dir), "--tokens", "3000", "--downstream-rows", "2"])
    assert "report written to" in capsys.readouterr().out
    report = json.loads((sae_dir / "saekit_eval.json").read_text())
    assert report["hook"] == "blocks.3.hook_resid_post" and report["architecture"] == "topk"
    assert report["reconstruction"]["l0"] == pytest.approx(4.0)
    assert report["downstream"]["ce_sae"] > report["downstream"]["ce_clean"]  # an untrained SAE hurts the model
    assert len(report["concepts"]["rows"]) == len(CONCEPTS)


def test_eval_refuses_an_sae_of_the_wrong_width(tmp_path):
    sae_dir = saved_sae(tmp_path / "sae", d_in=64)
    with pytest.raises(SystemExit, match="d_in=64 .* width 128"):
        main(["eval", str(sae_dir), "--out", str(tmp_path / "report.json")])
    assert not (tmp_path / "report.json").exists()
