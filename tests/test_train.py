"""The trainer: schedules, b_dec initialisation, resampling, one-pass sweeps, exact resume, bad input."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from saekit.sae import SAEConfig, create_sae
from saekit.store import ActivationStream, collect_activations
from saekit.train import TrainConfig, _Trainer, geometric_median, initialise_b_dec, train_sae, train_saes

HOOK = "blocks.3.hook_resid_post"


@pytest.fixture(scope="module")
def store(default):
    model, tokenizer = default
    return collect_activations(model, tokenizer, HOOK, 40_000, None, progress=False)


def sae_of(architecture, d_sae=256, **kw):
    settings = {"topk": dict(k=16), "batchtopk": dict(k=16), "relu": dict(sparsity_coefficient=1.0),
                "gated": dict(sparsity_coefficient=1.0), "jumprelu": dict(sparsity_coefficient=0.5)}[architecture]
    return create_sae(SAEConfig(architecture=architecture, d_in=128, d_sae=d_sae, hook_name=HOOK,
                                **{**settings, **kw}))


def test_learning_rate_and_sparsity_schedules():
    trainer = _Trainer(sae_of("relu"), TrainConfig(steps=100, lr=1e-3, lr_warmup_steps=10, lr_decay_fraction=0.2,
                                                   sparsity_warmup_fraction=0.05))
    assert trainer.lr_at(0) == pytest.approx(1e-4) and trainer.lr_at(9) == pytest.approx(1e-3)
    assert trainer.lr_at(50) == pytest.approx(1e-3) and trainer.lr_at(80) == pytest.approx(1e-3)
    assert trainer.lr_at(90) == pytest.approx(5e-4) and trainer.lr_at(99) == pytest.approx(5e-5)
    assert trainer.sparsity_scale(0) == pytest.approx(0.2) and trainer.sparsity_scale(4) == 1.0
    assert _Trainer(sae_of("topk", d_sae=2**14), TrainConfig()).base_lr == pytest.approx(2e-4)


def test_geometric_median_resists_outliers():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [100.0, 100.0]])
    median = geometric_median(points)
    # the outlier pulls the median along the diagonal only to t = 1/2 + 1/(2 sqrt 3), where the unit
    # vectors to the five points cancel; the mean goes to (20.4, 20.4)
    assert torch.allclose(median, torch.full((2,), 0.5 + 0.5 / 3**0.5), atol=1e-4)
    assert points.mean(0)[0] > 20
    sae = sae_of("relu")
    initialise_b_dec(sae, points.repeat(1, 64), "mean")
    assert torch.allclose(sae.b_dec, points.repeat(1, 64).mean(0))


def test_resampling_follows_anthropics_recipe(store):
    sae = sae_of("relu", decoder_norm_penalty=False)
    cfg = TrainConfig(steps=10, batch_size=1024, dead_window_tokens=100)
    trainer = _Trainer(sae, cfg)
    sae.init_weights(torch.Generator().manual_seed(0))
    x = next(store.batches(1024, seed=0))
    trainer.step(0, x)  # creates Adam state
    dead = torch.tensor([1, 5, 9])
    trainer.tokens_since_fired[:] = 0
    trainer.tokens_since_fired[dead] = 10_000  # beyond the resampling window
    alive = torch.ones(256, dtype=torch.bool)
    alive[dead] = False
    before = {name: p.detach().clone() for name, p in sae.named_parameters()}
    alive_norm = sae.W_enc[:, alive].norm(dim=0).mean()
    assert trainer.resample(x) == 3
    assert torch.allclose(sae.W_dec[dead].norm(dim=1), torch.ones(3))
    assert torch.allclose(sae.W_enc[:, dead].norm(dim=0), 0.2 * alive_norm.expand(3))
    assert (sae.b_enc[dead] == 0).all() and (trainer.tokens_since_fired[dead] == 0).all()
    assert torch.equal(sae.W_dec[alive], before["W_dec"][alive]) and torch.equal(sae.b_dec, before["b_dec"])
    # each new decoder row points at one of the batch's inputs (minus b_dec)
    inputs = torch.nn.functional.normalize(x - sae.b_dec, dim=1)
    assert ((sae.W_dec[dead] @ inputs.T).max(dim=1).values > 0.9999).all()
    state = trainer.optimizer.state[sae.W_dec]
    assert (state["exp_avg"][dead] == 0).all() and (state["exp_avg"][alive] != 0).any()
    assert (trainer.optimizer.state[sae.W_enc]["exp_avg_sq"][:, dead] == 0).all()


@pytest.mark.parametrize("architecture", ["relu", "topk", "batchtopk", "gated", "jumprelu"])
def test_every_architecture_learns(architecture, store):
    sae = sae_of(architecture)
    result = train_sae(sae, store, TrainConfig(steps=60, batch_size=1024, log_every=5, lr=2e-3, lr_warmup_steps=5),
                       progress=False)
    ev = result.history["explained_variance"]
    assert ev[-1] > ev[0] + 0.2 and ev[-1] > 0.6, ev
    if sae.unit_norm_decoder:
        assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(256), atol=1e-5)
    assert set(result.history) >= {"step", "tokens", "loss", "l0", "explained_variance", "dead_fraction", "lr",
                                   "reconstruction"}
    assert result.scale == store.scaling_factor(HOOK) and result.fire_counts.sum() > 0


@pytest.mark.parametrize("architecture", ["relu", "topk", "batchtopk", "matryoshka", "gated", "jumprelu"])
def test_bfloat16_autocast_keeps_float32_parameters_and_the_same_quality(architecture, store):
    cfg = TrainConfig(steps=40, batch_size=1024, log_every=5, lr=2e-3, lr_warmup_steps=5)
    settings = {"matryoshka": dict(architecture="matryoshka", d_in=128, d_sae=256, k=16, hook_name=HOOK)}
    make = (lambda: create_sae(SAEConfig(**settings[architecture]))) if architecture in settings else \
        (lambda: sae_of(architecture))
    exact = train_sae(make(), store, cfg, progress=False)
    mixed = train_sae(make(), store, TrainConfig(**{**cfg.__dict__, "autocast": "bfloat16"}), progress=False)
    assert all(p.dtype == torch.float32 for p in mixed.sae.parameters())
    assert not torch.equal(mixed.sae.W_enc, exact.sae.W_enc)  # the matmuls really ran in bfloat16
    ev_exact, ev_mixed = exact.history["explained_variance"][-1], mixed.history["explained_variance"][-1]
    assert ev_mixed == pytest.approx(ev_exact, abs=0.02), (ev_mixed, ev_exact)


def test_sweep_in_one_pass_equals_separate_runs(store):
    cfg = TrainConfig(steps=15, batch_size=512, log_every=1)
    together = train_saes([sae_of("topk", k=8), sae_of("relu", sparsity_coefficient=2.0)], store, cfg,
                          progress=False)
    alone = [train_sae(sae_of("topk", k=8), store, cfg, progress=False),
             train_sae(sae_of("relu", sparsity_coefficient=2.0), store, cfg, progress=False)]
    for a, b in zip(together, alone):
        assert a.history == b.history
        assert all(torch.equal(p, q) for p, q in zip(a.sae.state_dict().values(), b.sae.state_dict().values()))


class Interrupting:
    """A data source that raises after handing out `limit` batches (like Ctrl-C mid-run)."""

    def __init__(self, data, limit):
        self.data, self.limit = data, limit

    def scaling_factor(self, hook=None):
        return self.data.scaling_factor(hook)

    def batches(self, *args, **kwargs):
        for i, batch in enumerate(self.data.batches(*args, **kwargs)):
            if i == self.limit:
                raise KeyboardInterrupt
            yield batch


@pytest.mark.parametrize("architecture", ["topk", "relu"])
def test_resume_after_interruption_is_bit_identical(architecture, store, tmp_path):
    cfg = TrainConfig(steps=40, batch_size=512, log_every=3, checkpoint_every=10, checkpoint_dir=str(tmp_path),
                      dead_window_tokens=2048, resample_at=(0.3, 0.6))
    reference = train_sae(sae_of(architecture, decoder_norm_penalty=False), store,
                          TrainConfig(**{**cfg.__dict__, "checkpoint_every": 0, "checkpoint_dir": None}),
                          progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_sae(sae_of(architecture, decoder_norm_penalty=False), Interrupting(store, 25), cfg,
                  progress=False)
    resumed = train_sae(sae_of(architecture, decoder_norm_penalty=False), store, cfg, progress=False)
    assert resumed.history == reference.history
    for name, tensor in reference.sae.state_dict().items():
        assert torch.equal(resumed.sae.state_dict()[name], tensor), name
    assert torch.equal(resumed.tokens_since_fired, reference.tokens_since_fired)


TRAIN_SCRIPT = """
import sys, time, torch, saekit
from saekit.sae import SAEConfig, create_sae
from saekit.store import ActivationStore
from saekit.train import TrainConfig, train_sae
torch.set_num_threads(int(sys.argv[3]))
store = ActivationStore(sys.argv[1])
class Slow:
    def scaling_factor(self, hook=None): return store.scaling_factor(hook)
    def batches(self, *a, **k):
        for b in store.batches(*a, **k):
            time.sleep(0.05)
            yield b
sae = create_sae(SAEConfig(architecture="topk", d_in=128, d_sae=256, k=16, hook_name="x"))
train_sae(sae, Slow(), TrainConfig(steps=80, batch_size=512, checkpoint_every=10, checkpoint_dir=sys.argv[2],
                                   dead_window_tokens=2048), progress=False)
"""


def test_resume_after_kill_9_is_bit_identical(default, tmp_path):
    model, tokenizer = default
    data = collect_activations(model, tokenizer, HOOK, 20_000, tmp_path / "store", progress=False)
    checkpoints = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, str(data.path), str(checkpoints),
                             str(torch.get_num_threads())])
    deadline = time.time() + 120
    while time.time() < deadline and not (checkpoints / "checkpoint.pt").exists():
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = torch.load(checkpoints / "checkpoint.pt", weights_only=True)
    assert 10 <= saved["step"] < 80
    cfg = TrainConfig(steps=80, batch_size=512, checkpoint_every=10, checkpoint_dir=str(checkpoints),
                      dead_window_tokens=2048)
    new = lambda: create_sae(SAEConfig(architecture="topk", d_in=128, d_sae=256, k=16, hook_name="x"))  # noqa: E731
    resumed = train_sae(new(), data, cfg, progress=False)
    reference = train_sae(new(), data, TrainConfig(steps=80, batch_size=512, dead_window_tokens=2048), progress=False)
    for name, tensor in reference.sae.state_dict().items():
        assert torch.equal(resumed.sae.state_dict()[name], tensor), name
    assert resumed.history == reference.history


def test_training_straight_from_the_model(default):
    model, tokenizer = default
    stream = ActivationStream(model, tokenizer, HOOK, chunk_rows=8, scale_rows=8)
    first = stream.batches(1000, seed=2)
    batches = [next(first) for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(batches[3:], stream.batches(1000, seed=2, start=3)))
    assert abs(batches[0].norm(dim=1).mean() - 128**0.5) < 1.5
    result = train_sae(sae_of("topk"), stream, TrainConfig(steps=30, batch_size=1000, lr=2e-3, lr_warmup_steps=3),
                       progress=False)
    assert result.history["explained_variance"][-1] > 0.5


def test_bad_training_requests(store, tmp_path):
    with pytest.raises(ValueError, match="an SAE with d_in=64 cannot train on activations of width 128"):
        train_sae(create_sae(SAEConfig(architecture="topk", d_in=64, d_sae=128, k=8)), store, TrainConfig(steps=2))
    for kwargs, message in [(dict(steps=0), "steps and batch_size must be positive"),
                            (dict(lr=-1.0), "lr must be positive"),
                            (dict(b_dec_init="median"), "b_dec_init must be"),
                            (dict(checkpoint_every=5), "checkpoint_every needs a checkpoint_dir"),
                            (dict(autocast="int8"), "autocast must be None, 'bfloat16' or 'float16'")]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**kwargs)
    cfg = TrainConfig(steps=20, batch_size=512, checkpoint_every=5, checkpoint_dir=str(tmp_path))
    train_sae(sae_of("topk"), store, cfg, progress=False)
    with pytest.raises(ValueError, match="belongs to another run"):
        train_sae(sae_of("topk", k=4), store, cfg, progress=False)
