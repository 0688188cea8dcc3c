"""Data-parallel training under torchrun: two CPU ranks (gloo) train what one process trains on the same global
batch, stay identical to each other, checkpoint once and resume; BatchTopK's per-rank selection, pinned down."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import saekit
from saekit.distributed import Distributed, init_distributed, main, train_from_config
from saekit.sae import SAEConfig, create_sae
from saekit.sae.io import load_sae
from saekit.store import collect_activations
from saekit.train import TrainConfig, _Trainer, train_saes

HOOK = "blocks.1.hook_resid_post"
TORCHRUN = Path(sys.executable).with_name("torchrun")
TRAIN = dict(steps=20, batch_size=256, log_every=1, dead_window_tokens=256, lr_warmup_steps=2)
SWEEPS = {  # (SAE specs, training settings); every SAE has d_sae 256
    # trained from scratch: AuxK runs from the first steps (a latent is dead after one silent batch)
    "fresh": ([dict(architecture="topk", k=4), dict(architecture="batchtopk", k=4),
               dict(architecture="relu", sparsity_coefficient=1.0),
               dict(architecture="jumprelu", sparsity_coefficient=0.5),
               dict(architecture="relu", sparsity_coefficient=1.0, decoder_norm_penalty=False),
               dict(architecture="gated", sparsity_coefficient=1.0)], dict(lr=3e-3)),
    # a large learning rate and L1 kill latents, resampled at steps 10 and 19. This regime is chaotic (a
    # 1e-7 change of the inputs moves the weights by up to 0.3 over 20 steps), so 2 ranks take only the last
    # step, from a one-process checkpoint
    "resample": ([dict(architecture="relu", sparsity_coefficient=3.0, decoder_norm_penalty=False),
                  dict(architecture="gated", sparsity_coefficient=3.0)], dict(lr=3e-2, resample_at=(0.5, 0.95))),
}
WORKER = """
import json, sys, torch
from pathlib import Path
from saekit.distributed import init_distributed, train_from_config
torch.set_num_threads(1)
distributed = init_distributed()
for path in sys.argv[1:]:
    config = json.loads(Path(path).read_text())
    results = train_from_config(config, distributed, progress=False)
    states = [{"sae": r.sae.state_dict(), "history": r.history, "fire_counts": r.fire_counts,
               "tokens_since_fired": r.tokens_since_fired} for r in results]
    torch.save(states, f"{config['out']}.rank{distributed.rank}.pt")
torch.distributed.barrier()
torch.distributed.destroy_process_group()
"""


def torchrun(*args: str) -> None:
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [str(TORCHRUN), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread, as each rank has: tiny matmuls gain nothing from two, and lose much when the CPU is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    model, tokenizer = saekit.load_model()
    return collect_activations(model, tokenizer, HOOK, 6000, tmp_path_factory.mktemp("store"), progress=False)


def config(store, name: str, out: Path, **train) -> dict:
    specs, settings = SWEEPS[name]
    specs = [{"d_sae": 256, **spec} for spec in specs]
    return {"store": str(store.path), "sae": specs, "out": str(out), "train": {**TRAIN, **settings, **train}}


@pytest.fixture(scope="module")
def one_process(store, tmp_path_factory):
    """Both sweeps trained by this one process, and how many latents it resampled in the last step. The
    resampling sweep leaves a checkpoint one step before its end."""
    folder, resampled = tmp_path_factory.mktemp("one_process"), {}
    resample = _Trainer.resample

    def counting_resample(trainer, x):
        resampled[trainer.sae.architecture] = resample(trainer, x)
        return resampled[trainer.sae.architecture]

    resampling = config(store, "resample", folder / "resample", checkpoint_every=TRAIN["steps"] - 1,
                        checkpoint_dir=str(folder / "resample_checkpoints"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_Trainer, "resample", counting_resample)
        results = {"fresh": train_from_config(config(store, "fresh", folder / "fresh"), progress=False),
                   "resample": train_from_config(resampling, progress=False)}
    return results, resampling, resampled


@pytest.fixture(scope="module")
def two_ranks(store, one_process, tmp_path_factory):
    """The fresh sweep trained by 2 ranks (checkpointing at step 10), and the resampling sweep's last step taken by
    2 ranks from the one-process checkpoint: every rank's results, rank 0's saved SAEs and checkpoint."""
    folder = tmp_path_factory.mktemp("two_ranks")
    (folder / "worker.py").write_text(WORKER)
    configs = {"fresh": config(store, "fresh", folder / "fresh", checkpoint_every=10,
                               checkpoint_dir=str(folder / "fresh_checkpoints")),
               "resample": {**one_process[1], "out": str(folder / "resample")}}
    for name, cfg in configs.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    torchrun(str(folder / "worker.py"), *(str(folder / f"{name}.json") for name in configs))
    ranks = {name: [torch.load(folder / f"{name}.rank{r}.pt", weights_only=True) for r in range(2)] for name in configs}
    return folder, configs, ranks


def assert_close(ddp: dict, reference, atol: float = 1e-5) -> None:
    for key, tensor in reference.sae.state_dict().items():
        assert torch.allclose(ddp["sae"][key].float(), tensor.float(), rtol=0, atol=atol), \
            (key, float((ddp["sae"][key].float() - tensor.float()).abs().max()))
    # the same latents fired (a pre-activation within rounding of its cutoff may flip, nothing more)
    assert (ddp["fire_counts"] - reference.fire_counts).abs().sum() <= 1e-3 * reference.fire_counts.sum()
    for key in ("loss", "explained_variance", *(["auxk"] if "auxk" in reference.history else [])):
        assert ddp["history"][key] == pytest.approx(reference.history[key], rel=1e-4, abs=1e-6), key


def test_ranks_stay_identical(two_ranks):
    for first, second in two_ranks[2].values():
        for a, b in zip(first, second):
            assert all(torch.equal(a["sae"][key], b["sae"][key]) for key in a["sae"])
            assert a["history"] == b["history"] and torch.equal(a["fire_counts"], b["fire_counts"])
            assert torch.equal(a["tokens_since_fired"], b["tokens_since_fired"])


def test_two_ranks_train_what_one_process_trains(two_ranks, one_process):
    folder, _, ranks = two_ranks
    results, _, resampled = one_process
    topk = results["fresh"][0]
    assert max(topk.history["auxk"]) > 0  # AuxK really ran (and needed the global variance)
    for i, reference in enumerate(results["fresh"]):
        if reference.sae.architecture != "batchtopk":
            assert_close(ranks["fresh"][0][i], reference)
    # resampling in a step taken by 2 ranks picks the latents and inputs one process picks
    assert resampled["relu"] > 0 and resampled["gated"] > 0
    for ddp, reference in zip(ranks["resample"][0], results["resample"]):
        assert_close(ddp, reference)
    # rank 0 saved the SAEs (in raw space)
    saved = load_sae(folder / "fresh" / "0")
    assert all(torch.allclose(saved.state_dict()[k], v, atol=1e-5) for k, v in topk.raw_sae().state_dict().items())


def test_batchtopk_selects_per_rank(two_ranks, one_process, store):
    """Each rank keeps the top k x (its tokens) of its slice, not of the global batch: the result is one process
    taking BatchTopK over each half of the batch (with the threshold from the smallest value either half kept)."""
    _, configs, ranks = two_ranks
    index = [spec["architecture"] for spec in configs["fresh"]["sae"]].index("batchtopk")
    sae = create_sae(SAEConfig(**configs["fresh"]["sae"][index], d_in=store.d_in(), hook_name=HOOK))
    whole_batch = sae._batch_top

    def per_half(acts):
        half = len(acts) // 2
        return torch.cat([whole_batch(acts[:half]), whole_batch(acts[half:]) + half * acts.shape[1]])

    sae._batch_top = per_half
    train = {**configs["fresh"]["train"], "checkpoint_every": 0, "checkpoint_dir": None}
    per_rank = train_saes([sae], store, TrainConfig(**train), progress=False)[0]
    assert_close(ranks["fresh"][0][index], per_rank)
    global_topk = one_process[0]["fresh"][index]
    assert not torch.allclose(ranks["fresh"][0][index]["sae"]["W_enc"], global_topk.sae.W_enc, atol=1e-3)


def test_resume_under_torchrun(two_ranks, tmp_path):
    folder, configs, _ = two_ranks
    checkpoints = folder / "fresh_checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint.pt"]  # rank 0 alone wrote it, atomically
    state = torch.load(checkpoints / "checkpoint.pt", weights_only=True)
    assert state["step"] == 10
    for trainer in state["trainers"]:  # a mark that only a run continuing from this checkpoint carries to the end
        trainer["history"]["resumed_from"] = [10]
    torch.save(state, checkpoints / "checkpoint.pt")
    (tmp_path / "resume.json").write_text(json.dumps({**configs["fresh"], "out": str(tmp_path / "fresh")}))
    torchrun("-m", "saekit.distributed", "--config", str(tmp_path / "resume.json"), "--no-progress")
    for i in range(len(configs["fresh"]["sae"])):
        resumed, uninterrupted = load_sae(tmp_path / "fresh" / str(i)), load_sae(folder / "fresh" / str(i))
        assert all(torch.equal(resumed.state_dict()[k], v) for k, v in uninterrupted.state_dict().items())
        facts = json.loads((tmp_path / "fresh" / str(i) / "cfg.json").read_text())["metadata"]["saekit"]["training"]
        assert facts["final"]["resumed_from"] == 10


def test_runner_without_torchrun(store, tmp_path):
    config = {"store": str(store.path), "hook": HOOK, "sae": {"architecture": "topk", "d_sae": 64, "k": 4},
              "train": {"steps": 3, "batch_size": 256}, "out": str(tmp_path / "sae")}
    (tmp_path / "run.json").write_text(json.dumps(config))
    main(["--config", str(tmp_path / "run.json"), "--no-progress"])  # python -m saekit.distributed, no torchrun
    sae = load_sae(tmp_path / "sae")  # one SAE: saved in `out` itself
    assert (sae.cfg.architecture, sae.cfg.d_in, sae.cfg.hook_name) == ("topk", 128, HOOK)
    assert sae.cfg.metadata["model_name"] == store.manifest["model"]["name"]


def test_bad_distributed_requests(store, monkeypatch):
    sae = create_sae(SAEConfig(architecture="topk", d_in=store.d_in(), d_sae=64, k=4))
    with pytest.raises(ValueError, match="batch_size must be a multiple of the 2 ranks .* got 255"):
        train_saes([sae], store, TrainConfig(steps=2, batch_size=255), progress=False,
                   distributed=Distributed(rank=0, world_size=2))
    with pytest.raises(ValueError, match=r"unknown: \['steps'\], missing: \['out'\]"):
        train_from_config({"store": str(store.path), "sae": {"architecture": "topk", "k": 4}, "steps": 5})
    monkeypatch.delenv("RANK", raising=False)
    assert init_distributed() == Distributed(rank=0, world_size=1)  # plain python: one process, nothing to join
