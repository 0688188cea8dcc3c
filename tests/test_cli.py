"""The `saekit` command line."""

import pytest

from saekit.cli import main
from saekit.world import label_text


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
