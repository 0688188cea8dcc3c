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


# --------------------------------------------------------------------------- the pipeline: collect, train, eval, ...

HOOK = "blocks.3.hook_resid_post"
TRAIN = {"store": None, "hook": HOOK, "sae": {"architecture": "topk", "d_sae": 64, "k": 4},
         "train": {"steps": 12, "batch_size": 256, "log_every": 1, "lr_warmup_steps": 2, "checkpoint_every": 4},
         "out": None}


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    """A 3,000-token store, collected from a config file whose token count a flag overrides."""
    folder = tmp_path_factory.mktemp("collect")
    (folder / "collect.json").write_text(json.dumps({"out": str(folder / "store"), "hook": [HOOK], "tokens": 500,
                                                     "data": "tinyworld:0", "batch-rows": 8, "no_progress": True}))
    main(["collect", "--config", str(folder / "collect.json"), "--tokens", "3000"])
    return folder / "store"


def test_collect_takes_a_config_file_whose_settings_flags_override(store_dir, capsys):
    manifest = json.loads((store_dir / "manifest.json").read_text())
    assert manifest["batch_rows"] == 8 and manifest["hooks"] == {HOOK: 128} and "autocast" not in manifest
    assert sum(s["tokens"] for s in manifest["shards"]) == 3000  # --tokens beat the file's 500
    main(["collect", "--out", str(store_dir), "--hook", HOOK, "--tokens", "3000", "--batch-rows", "8"])
    assert "resuming the store at" in capsys.readouterr().out  # nothing left to do, nothing rewritten


def test_config_errors_name_the_valid_keys(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"out": "x", "tokns": 5}))
    with pytest.raises(SystemExit, match=r"collect: error: unknown keys \['tokns'\] in .*valid keys: .*'tokens'"):
        main(["collect", "--config", str(tmp_path / "bad.json")])
    (tmp_path / "bad.json").write_text(json.dumps({"dtype": "float64"}))
    with pytest.raises(SystemExit, match="dtype must be one of"):
        main(["collect", "--config", str(tmp_path / "bad.json")])
    (tmp_path / "bad.json").write_text(json.dumps({"no-progress": "yes"}))
    with pytest.raises(SystemExit, match="no_progress must be true or false"):
        main(["collect", "--config", str(tmp_path / "bad.json")])
    (tmp_path / "train.json").write_text(json.dumps({**TRAIN, "store": "s", "out": "o", "epochs": 2}))
    with pytest.raises(SystemExit, match=r"unknown keys \['epochs'\] .*valid keys: \['hook', 'out', 'sae', 'store'"):
        main(["train", "--config", str(tmp_path / "train.json")])
    (tmp_path / "train.json").write_text(json.dumps({**TRAIN, "store": "s", "out": "o", "train": {"stps": 3}}))
    with pytest.raises(SystemExit, match=r"unknown keys \['stps'\] in the config's train; valid keys: \['steps'"):
        main(["train", "--config", str(tmp_path / "train.json")])
    with pytest.raises(SystemExit, match="sae must be an object of SAEConfig settings or a list"):
        main(["train", "--store", "s", "--out", "o", "--sae", '"topk"'])
    with pytest.raises(SystemExit, match="--out is required"):
        main(["collect", "--tokens", "10"])
    with pytest.raises(SystemExit, match="--device: expected cpu, cuda"):
        main(["collect", "--out", str(tmp_path / "s"), "--device", "gpu"])


def test_device_defaults():
    from argparse import Namespace

    from saekit.cli import _device, _hardware_default

    assert _device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    gpu, cpu = Namespace(device="cuda:1"), Namespace(device="cpu")
    assert (_hardware_default(gpu, "batch_rows"), _hardware_default(gpu, "autocast")) == (128, "bfloat16")
    assert (_hardware_default(cpu, "batch_rows"), _hardware_default(cpu, "autocast")) == (32, "none")


def test_collect_under_bfloat16_autocast_on_cpu(store_dir, tmp_path):
    from saekit.store import ActivationStore

    main(["collect", "--out", str(tmp_path / "bf16"), "--hook", HOOK, "--tokens", "3000", "--batch-rows", "8",
          "--device", "cpu", "--autocast", "bfloat16", "--no-progress"])
    exact, mixed = ActivationStore(store_dir), ActivationStore(tmp_path / "bf16")
    assert mixed.manifest["autocast"] == "bfloat16" and mixed.dtype == "float32"
    assert (mixed.tokens() == exact.tokens()).all()
    a, b = exact.activations(), mixed.activations()
    relative = (a - b).norm(dim=1) / a.norm(dim=1)
    assert 0 < relative.mean() < 0.02 and relative.max() < 0.05  # bfloat16 keeps 8 bits of mantissa
    with pytest.raises(SystemExit, match="its autocast is 'bfloat16', but this collection has None"):
        main(["collect", "--out", str(tmp_path / "bf16"), "--hook", HOOK, "--tokens", "4000", "--batch-rows", "8",
              "--autocast", "none"])


def test_pipeline_train_eval_dashboard_export(store_dir, tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({**TRAIN, "store": str(store_dir), "out": str(tmp_path / "sae")}))
    main(["train", "--config", str(config), "--no-progress"])
    sae_dir = tmp_path / "sae"
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    assert cfg["d_sae"] == 64 and cfg["metadata"]["hook_name"] == HOOK
    assert (tmp_path / "sae-checkpoints" / "checkpoint.pt").is_file()  # beside the SAE, which a save replaces

    main(["eval", str(sae_dir), "--store", str(store_dir), "--tokens", "2000", "--downstream-rows", "2"])
    report = json.loads((sae_dir / "saekit_eval.json").read_text())
    assert report["tokens"] == 2000 and report["data"] == str(store_dir.resolve())
    assert report["reconstruction"]["l0"] == pytest.approx(4.0) and len(report["concepts"]["rows"]) == len(CONCEPTS)

    main(["dashboard", str(sae_dir), "--store", str(store_dir), "--tokens", "2000", "--per-page", "40",
          "--latents", "all", "--n-top", "5"])
    dashboard = sae_dir / "dashboard"
    assert sorted(p.name for p in dashboard.iterdir()) == ["dashboard.json", "feature_stats.npz",
                                                           "features_00000.html", "features_00040.html", "index.html"]
    assert 'href="features_00040.html"' in (dashboard / "index.html").read_text()
    facts = json.loads((dashboard / "dashboard.json").read_text())
    assert facts["model"] == "nanochat-tinyworld" and facts["n_layer"] == 6 and facts["tokens"] == 2000
    assert facts["data"] == "tinyworld:0" and facts["store"] == str(store_dir.resolve())

    (tmp_path / "export.toml").write_text(f'out = "{tmp_path / "np"}"\ncreated-at = "2026-01-01T00:00:00Z"\n'
                                          'batch_size = 32\n')
    main(["export", str(sae_dir), "--config", str(tmp_path / "export.toml")])
    source = tmp_path / "np" / "nanochat-tinyworld" / "3-saekit-res-64"
    assert len(list((source / "features").iterdir())) == 2  # 64 latents in batches of 32
    assert json.loads((source / "source.jsonl").read_text())["saelensConfig"]["d_sae"] == 64
    assert json.loads((source / "model.jsonl").read_text())["layers"] == 6
    batches = tmp_path / "np" / "saedashboard" / f"nanochat-tinyworld_saekit-res-64_{HOOK}_64"
    assert len(json.loads((batches / "batch-1.json").read_text())["features"]) == 32
    out = capsys.readouterr().out
    assert "Neuronpedia export:" in out and "SAEDashboard batches:" in out


def test_train_resumes_bit_identical(store_dir, tmp_path, monkeypatch, capsys):
    import saekit.train
    from saekit.sae.io import load_sae

    args = ["--store", str(store_dir), "--d-sae", "64", "--k", "4", "--steps", "12", "--batch-size", "256",
            "--checkpoint-every", "4", "--no-progress"]
    main(["train", *args, "--out", str(tmp_path / "whole")])

    save = saekit.train._save_checkpoint
    saved = []

    def save_then_die(path, trainers, step, cfg):
        save(path, trainers, step, cfg)
        saved.append(step)
        if step == 8:
            raise KeyboardInterrupt  # killed after the step-8 checkpoint

    monkeypatch.setattr(saekit.train, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        main(["train", *args, "--out", str(tmp_path / "resumed")])
    assert saved == [4, 8] and not (tmp_path / "resumed").exists()
    main(["train", *args, "--out", str(tmp_path / "resumed")])
    assert "resuming from the checkpoint" in capsys.readouterr().out and saved == [4, 8]  # no step-4/8 redone
    whole, resumed = load_sae(tmp_path / "whole"), load_sae(tmp_path / "resumed")
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_train_autocast_follows_the_device_unless_told(store_dir, tmp_path):
    from saekit.cli import _train_config, build_parser

    def autocast(*extra, device="cpu"):
        args = build_parser().parse_args(["train", "--store", str(store_dir), "--out", str(tmp_path / "sae"),
                                          "--d-sae", "64", "--k", "4", "--device", device, *extra])
        return _train_config(args)["train"]["autocast"]

    assert autocast() is None and autocast(device="cuda") == "bfloat16"  # mixed precision by default on a GPU
    assert autocast("--autocast", "bfloat16") == "bfloat16" and autocast("--autocast", "none", device="cuda") is None
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"train": {"autocast": "bfloat16"}}))
    assert autocast("--config", str(config)) == "bfloat16"  # the file's choice stands unless a flag says otherwise
    assert autocast("--config", str(config), "--autocast", "none") is None
