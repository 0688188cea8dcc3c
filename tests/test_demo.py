"""`saekit demo`: the whole pipeline, at a tiny size, ends in a self-contained report."""

import re

from saekit.cli import main
from saekit.demo import DemoConfig, run_demo
from saekit.sae.io import load_sae


def test_demo_writes_a_report_and_a_loadable_sae(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEKIT_CACHE", str(tmp_path / "cache"))
    cfg = DemoConfig(d_sae=256, k=8, steps=20, batch_size=1024, train_tokens=30_000, eval_tokens=8_000,
                     downstream_rows=2, n_cards=3)
    path = run_demo(tmp_path / "demo", cfg=cfg, progress=False)
    page = path.read_text()
    assert page.count('<div class="sk-card"') == 3
    for heading in ("How good is the SAE?", "Which ground-truth concepts does it find?", "explained_variance",
                    "delta_ce", "sentence_end"):
        assert heading in page
    assert "<script" not in page and not re.search(r'(src|href)="http', page)
    sae = load_sae(tmp_path / "demo" / "sae")
    assert sae.cfg.architecture == "topk" and sae.cfg.d_sae == 256 and sae.cfg.hook_name == "blocks.3.hook_resid_post"


def test_demo_command_prints_where_the_report_is(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAEKIT_CACHE", str(tmp_path / "cache"))
    main(["demo", "--out", str(tmp_path / "out"), "--d-sae", "128", "--k", "4", "--steps", "5",
          "--train-tokens", "20000", "--eval-tokens", "5000"])
    out = capsys.readouterr().out
    assert f"report: {(tmp_path / 'out' / 'report.html').resolve()}" in out
    assert "a TopK SAE (128 latents, k = 4) on nanochat-tinyworld's blocks.3.hook_resid_post" in out
    assert "explained variance" in out and "concept coverage" in out
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "sae" / "cfg.json").is_file()
