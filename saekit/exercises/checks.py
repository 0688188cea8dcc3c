"""
The checks that follow each exercise: is the learner's function right, and if not, which slip is it?

Every `check_<name>(fn)` runs `fn` and a reference on a few fixed, seeded inputs, built fresh for
each call (so a function that edits its inputs cannot spoil the next run). All outputs close: one
line says so. Otherwise the check computes the outputs of the common wrong versions ("mistakes")
on the same inputs; the first whose outputs the learner's match on every input names the slip.
Some slips show in gradients rather than values (a residual that is not detached, a gradient
returned for the wrong input): those are recognised by a symptom on the learner's output. When
nothing matches, the message gives the first differing output's shapes and largest error. A stub
that still raises NotImplementedError gets "not implemented yet".

References are saekit's own code wherever saekit has the function (the SAE classes, AuxK, the
JumpReLU step, the F1 of concept recovery); the rest are one-liners of the notebooks' formulas.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from saekit.evaluate import f1_from_counts
from saekit.sae import SAE, SAEConfig, create_sae
from saekit.sae.jumprelu import _Step
from saekit.sae.sparse import auxk_loss as library_auxk_loss


class ExerciseFailure(AssertionError):
    """The learner's function disagrees with the reference; the message says how."""


@dataclass(frozen=True)
class Mistake:
    """A common wrong version. `variant` is the slip written out; a learner's function is recognised as it when
    their outputs agree on every test input, or, where the slip shows in a gradient and not in the values, when
    `symptom` holds for the learner's output on some input."""

    message: str
    variant: Callable
    symptom: Callable[[Any], bool] | None = None


@dataclass(frozen=True)
class Exercise:
    name: str
    notebook: str
    goal: str
    cases: Sequence[Callable[[], tuple]]  # each builds one set of arguments, fresh every call
    reference: Callable
    mistakes: Sequence[Mistake]
    run: Callable[[Callable, tuple], Any] = lambda fn, args: fn(*args)

    def check(self, fn: Callable) -> None:
        outputs = [self._learner_output(fn, i) for i in range(len(self.cases))]
        expected = [self.run(self.reference, make()) for make in self.cases]
        if all(_close(out, exp) for out, exp in zip(outputs, expected)):
            print(f"{self.name}: correct on {len(self.cases)} test inputs")
            return
        for mistake in self.mistakes:
            if mistake.symptom is not None:
                recognised = any(mistake.symptom(out) for out in outputs)
            else:
                recognised = all(_close(out, self.run(mistake.variant, make()))
                                 for out, make in zip(outputs, self.cases))
            if recognised:
                raise ExerciseFailure(f"{self.name}: {mistake.message}")
        i = next(i for i, (out, exp) in enumerate(zip(outputs, expected)) if not _close(out, exp))
        raise ExerciseFailure(f"{self.name}: wrong on test input {i + 1} of {len(self.cases)}: "
                              f"{_difference(outputs[i], expected[i])}. None of the common mistakes this check "
                              "knows matches; compare your code with the formula above it.")

    def _learner_output(self, fn: Callable, i: int) -> Any:
        try:
            out = self.run(fn, self.cases[i]())
        except NotImplementedError:
            raise ExerciseFailure(f"{self.name}: not implemented yet. Replace the `raise NotImplementedError` line "
                                  f"with your code ({self.goal}), run that cell, then this one.") from None
        except Exception as error:
            raise ExerciseFailure(f"{self.name} raised {type(error).__name__} on test input {i + 1}: {error}") \
                from error
        if out is None:
            raise ExerciseFailure(f"{self.name} returned None: is a `return` missing?")
        return out


# --------------------------------------------------------------------------- comparing outputs


def _as_number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        return float(value)
    return None


def _close(a: Any, b: Any) -> bool:
    if isinstance(b, (tuple, list)):
        return isinstance(a, (tuple, list)) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(b, torch.Tensor) and b.numel() > 1:
        if not isinstance(a, torch.Tensor) or a.shape != b.shape:
            return False
        a, b = a.detach().double(), b.detach().double()
        return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(b.abs().max()))))
    x, y = _as_number(a), _as_number(b)
    return x is not None and y is not None and math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6)


def _difference(a: Any, b: Any) -> str:
    """What differs between a learner's output `a` and the expected `b`, in a few words."""
    if isinstance(b, (tuple, list)):
        if not isinstance(a, (tuple, list)) or len(a) != len(b):
            return f"expected {len(b)} values ({', '.join(_kind(y) for y in b)}), got {_kind(a)}"
        j = next(j for j, (x, y) in enumerate(zip(a, b)) if not _close(x, y))
        return f"returned value {j + 1} of {len(b)}: {_difference(a[j], b[j])}"
    if isinstance(b, torch.Tensor) and b.numel() > 1:
        if not isinstance(a, torch.Tensor):
            return f"expected a tensor of shape {tuple(b.shape)}, got {_kind(a)}"
        if a.shape != b.shape:
            return f"expected shape {tuple(b.shape)}, got {tuple(a.shape)}"
        error = float((a.detach().double() - b.detach().double()).abs().max())
        return f"largest |difference| {error:.3g} where the expected values reach {float(b.abs().max()):.3g}"
    x, y = _as_number(a), _as_number(b)
    if x is None:
        return f"expected a number, got {_kind(a)}"
    return f"expected {y:.6g}, got {x:.6g}"


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------- shared helpers


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(g: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * scale


def _sae(architecture: str, tensors: dict[str, torch.Tensor], **cfg) -> SAE:
    """A saekit SAE holding the given tensors, to serve as the reference."""
    d_in, d_sae = tensors["W_enc"].shape
    sae = create_sae(SAEConfig(architecture=architecture, d_in=d_in, d_sae=d_sae, **cfg))
    with torch.no_grad():
        for name, value in tensors.items():
            getattr(sae, name).copy_(value)
    return sae


def _gradient_reaches_last(out: Any) -> bool:
    """For runs that return (..., gradient of an input that must get none): is that gradient non-zero?"""
    return isinstance(out, tuple) and isinstance(out[-1], torch.Tensor) and bool(out[-1].abs().max() > 0)


# --------------------------------------------------------------------------- 01: mean cosine


def _mean_cosine_cases():
    def make(seed):
        g = _gen(seed)
        offset = _randn(g, 16)  # shared direction, so the cosines are far from zero
        vectors = (offset + _randn(g, 20, 16)) * torch.rand(20, 1, generator=g).mul(4).add(0.5)
        return (vectors,)
    return [lambda s=s: make(s) for s in range(4)]


def _mean_cosine(vectors):
    unit = F.normalize(vectors, dim=-1)
    return (unit @ unit.T).mean()


def _mean_cosine_off_diagonal(vectors):
    cosines = F.normalize(vectors, dim=-1) @ F.normalize(vectors, dim=-1).T
    return (cosines.sum() - cosines.diagonal().sum()) / (cosines.numel() - len(cosines))


MEAN_COSINE = Exercise(
    "mean_cosine", "01", "the mean cosine similarity between every pair of rows, the diagonal included",
    _mean_cosine_cases(), _mean_cosine, [
        Mistake("that is the mean dot product, not the mean cosine: normalise each vector to unit length first "
                "(torch.nn.functional.normalize(vectors, dim=-1)).",
                variant=lambda v: (v @ v.T).mean()),
        Mistake("you normalised along dim 0, so each *dimension* has unit length across the vectors. A cosine "
                "normalises each vector: dim=-1.",
                variant=lambda v: (F.normalize(v, dim=0) @ F.normalize(v, dim=0).T).mean()),
        Mistake("you left out the diagonal. Here the mean runs over the whole matrix, each vector's cosine of 1 "
                "with itself included: (unit @ unit.T).mean().",
                variant=_mean_cosine_off_diagonal),
    ])


# --------------------------------------------------------------------------- 02: the ReLU SAE and its loss


def _relu_sae_cases():
    def make(seed):
        g = _gen(seed)
        d_in, d_sae = 16, 40
        W_dec = F.normalize(_randn(g, d_sae, d_in), dim=1) * torch.rand(d_sae, 1, generator=g).mul(1.5).add(0.5)
        W_enc = W_dec.T + _randn(g, d_in, d_sae, scale=0.3)  # not the decoder's transpose, so the norms differ
        return (_randn(g, 24, d_in, scale=2), W_enc, _randn(g, d_sae, scale=0.2), W_dec, _randn(g, d_in), 0.7)
    return [lambda s=s: make(s) for s in range(4)]


def _relu_sae_forward(x, W_enc, b_enc, W_dec, b_dec, l1_coefficient):
    sae = _sae("relu", {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec},
               sparsity_coefficient=l1_coefficient)
    with torch.no_grad():
        out = sae(x)
        return out.x_hat, sae.encode(x), out.loss


def _relu_variant(encode_b_dec=True, decode_b_dec=True, weights="decoder", reduce="mean"):
    def forward(x, W_enc, b_enc, W_dec, b_dec, l1_coefficient):
        f = torch.relu(((x - b_dec) if encode_b_dec else x) @ W_enc + b_enc)
        x_hat = f @ W_dec + (b_dec if decode_b_dec else 0)
        norms = {"decoder": W_dec.norm(dim=1), "encoder": W_enc.norm(dim=0), "none": 1.0}[weights]
        per_token = (x_hat - x).pow(2).sum(-1) + l1_coefficient * (f * norms).sum(-1)
        return x_hat, f, per_token.mean() if reduce == "mean" else per_token.sum()
    return forward


RELU_SAE_FORWARD = Exercise(
    "relu_sae_forward", "02", "return x_hat, f and the loss: squared error plus the decoder-norm-weighted L1",
    _relu_sae_cases(), _relu_sae_forward, [
        Mistake("the encoder reads x - b_dec: subtract b_dec from x before multiplying by W_enc.",
                variant=_relu_variant(encode_b_dec=False)),
        Mistake("the decoder adds b_dec back: x_hat = f @ W_dec + b_dec.", variant=_relu_variant(decode_b_dec=False)),
        Mistake("the L1 term is weighted by the norms of the decoder rows, W_dec.norm(dim=1), one per latent; you "
                "used the encoder's columns, W_enc.norm(dim=0).", variant=_relu_variant(weights="encoder")),
        Mistake("you used the plain L1 norm of f. Weight each latent by the norm of its decoder row "
                "(W_dec.norm(dim=1)), or the SAE can shrink f and grow W_dec to dodge the penalty.",
                variant=_relu_variant(weights="none")),
        Mistake("you summed the loss over the tokens of the batch; average it (.mean()), so that it does not grow "
                "with the batch size.", variant=_relu_variant(reduce="sum")),
    ])


def _relative_bias_cases():
    def make(seed, shrink):
        g = _gen(seed)
        x = _randn(g, 64, 16, scale=3) + _randn(g, 16)
        x_hat = shrink * x * torch.rand(64, 1, generator=g).mul(0.4).add(0.8) + _randn(g, 64, 16, scale=0.5)
        return x, x_hat
    return [lambda s=s, k=k: make(s, k) for s, k in enumerate((0.9, 0.7, 0.8))]


def _relative_bias(x, x_hat):
    return x_hat.pow(2).sum() / (x * x_hat).sum()


RELATIVE_BIAS = Exercise(
    "relative_bias", "02", "E||x_hat||^2 / E[x . x_hat] over the batch",
    _relative_bias_cases(), _relative_bias, [
        Mistake("the ratio is upside down: E||x_hat||² / E[x·x_hat], so that shrunk reconstructions score below 1.",
                variant=lambda x, x_hat: (x * x_hat).sum() / x_hat.pow(2).sum()),
        Mistake("you averaged a ratio per token. The relative bias is a ratio of two averages over the batch: "
                "sum ||x_hat||² over all tokens divided by the sum of x·x_hat.",
                variant=lambda x, x_hat: (x_hat.pow(2).sum(-1) / (x * x_hat).sum(-1)).mean()),
        Mistake("that is the L2 ratio ||x_hat|| / ||x||. The relative bias compares E||x_hat||² with E[x·x_hat], "
                "the part of x_hat along x.",
                variant=lambda x, x_hat: (x_hat.norm(dim=-1) / x.norm(dim=-1)).mean()),
    ])


# --------------------------------------------------------------------------- 03: TopK and AuxK


def _topk_cases():
    def make(seed):
        g = _gen(seed)
        d_in, d_sae = 16, 48
        # negative encoder biases: some tokens' k-th best pre-activation is below zero
        return (_randn(g, 24, d_in), _randn(g, d_in, d_sae, scale=0.3), _randn(g, d_sae, scale=0.5) - 1.2,
                _randn(g, d_in), 6)
    return [lambda s=s: make(s) for s in range(4)]


def _topk_encode(x, W_enc, b_enc, b_dec, k):
    sae = _sae("topk", {"W_enc": W_enc, "b_enc": b_enc, "b_dec": b_dec}, k=k)
    with torch.no_grad():
        return sae.encode(x)


def _topk_variant(dim=-1, relu=True, subtract_b_dec=True):
    def encode(x, W_enc, b_enc, b_dec, k):
        pre = ((x - b_dec) if subtract_b_dec else x) @ W_enc + b_enc
        values, indices = pre.topk(k, dim=dim)
        return torch.zeros_like(pre).scatter(dim, indices, torch.relu(values) if relu else values)
    return encode


TOPK_ENCODE = Exercise(
    "topk_encode", "03", "keep each token's k largest pre-activations (ReLU'd) in place, zero the rest",
    _topk_cases(), _topk_encode, [
        Mistake("you took the top k along dim 0: the k *tokens* with the largest value of each latent. Take the "
                "top k latents of each token: topk(k, dim=-1).", variant=_topk_variant(dim=0)),
        Mistake("a kept pre-activation can be negative (when fewer than k scores are positive): apply ReLU to the "
                "kept values.", variant=_topk_variant(relu=False)),
        Mistake("the encoder reads x - b_dec: subtract b_dec before multiplying by W_enc.",
                variant=_topk_variant(subtract_b_dec=False)),
    ])


def _auxk_cases():
    def make(seed):
        g = _gen(seed)
        d_in, d_sae = 16, 48
        dead = torch.rand(d_sae, generator=g) < 0.4
        dead[:12] = True  # at least k_aux dead latents, so saekit's scale-down for few dead latents is 1
        b_enc = torch.where(dead, torch.full((d_sae,), -1.0), torch.zeros(d_sae))  # dead latents score low
        return {"x": _randn(g, 32, d_in), "x_hat": _randn(g, 32, d_in, scale=0.9),
                "W_enc": _randn(g, d_in, d_sae, scale=0.3), "b_enc": b_enc,
                "W_dec": F.normalize(_randn(g, d_sae, d_in), dim=1), "b_dec": _randn(g, d_in), "dead": dead,
                "k_aux": 8}
    return [lambda s=s: (make(s),) for s in range(3)]


def _run_auxk(fn, args):
    """Call `fn` as the exercise does, then backpropagate: the loss, W_dec's gradient and x_hat's gradient."""
    a = {k: v.clone().requires_grad_() if k in ("x_hat", "W_enc", "b_enc", "W_dec") else v
         for k, v in args[0].items()}
    pre = (a["x"] - a["b_dec"]) @ a["W_enc"] + a["b_enc"]
    loss = fn(a["x"], a["x_hat"], pre, a["dead"], a["W_dec"], a["b_dec"], a["k_aux"])
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        return loss
    loss.backward()
    grad = a["x_hat"].grad
    return loss.detach(), a["W_dec"].grad, torch.zeros_like(a["x_hat"]) if grad is None else grad


def _auxk_reference(x, x_hat, pre, dead, W_dec, b_dec, k_aux):
    # saekit's AuxK with an identity encoder on the pre-activations picks and decodes exactly `pre`'s values
    d_sae = pre.shape[-1]
    return library_auxk_loss(pre.detach(), pre.detach(), torch.eye(d_sae), torch.zeros(d_sae), W_dec,
                             (x - x_hat).detach(), dead, k_aux, 1.0)


def _auxk_variant(mask_dead=True, with_b_dec=False, relu=False, detach=True, normalise=True):
    def loss(x, x_hat, pre, dead, W_dec, b_dec, k_aux):
        residual = (x - x_hat).detach() if detach else x - x_hat
        top = (pre.masked_fill(~dead, float("-inf")) if mask_dead else pre).topk(k_aux, dim=-1)
        f_aux = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values) if relu else top.values)
        predicted = f_aux @ W_dec + (b_dec if with_b_dec else 0)
        error = (predicted - residual).pow(2).sum(-1).mean()
        variance = (residual - residual.mean(dim=0)).pow(2).sum(-1).mean()
        return error / variance if normalise else error
    return loss


AUXK_LOSS = Exercise(
    "auxk_loss", "03", "the top k_aux dead latents reconstruct the detached residual x - x_hat, without b_dec, "
    "normalised by the residual's variance",
    _auxk_cases(), _auxk_reference, [
        Mistake("the residual x - x_hat must be detached: as it is, AuxK's gradient flows into x_hat and moves what "
                "the live latents do. Use (x - x_hat).detach().",
                variant=_auxk_variant(detach=False), symptom=_gradient_reaches_last),
        Mistake("you decoded the auxiliary reconstruction with b_dec. It predicts the residual x - x_hat, and b_dec "
                "is already in x_hat: use f_aux @ W_dec alone.", variant=_auxk_variant(with_b_dec=True)),
        Mistake("AuxK chooses among the *dead* latents only: set the live latents' pre-activations to -inf "
                "(pre.masked_fill(~dead, float('-inf'))) before topk.", variant=_auxk_variant(mask_dead=False)),
        Mistake("use the dead latents' raw pre-activations, without ReLU: theirs are often all negative, and a "
                "ReLU would leave them with no gradient at all.", variant=_auxk_variant(relu=True)),
        Mistake("divide the squared error by the residual's variance, (residual - residual.mean(0)).pow(2)"
                ".sum(-1).mean(), so the loss does not shrink as the SAE gets better.",
                variant=_auxk_variant(normalise=False)),
    ], run=_run_auxk)


# --------------------------------------------------------------------------- 04: Gated and JumpReLU


def _gated_cases():
    def make(seed):
        g = _gen(seed)
        d_in, d_sae = 16, 40
        return (_randn(g, 24, d_in), _randn(g, d_in, d_sae, scale=0.4), _randn(g, d_sae, scale=0.5),
                _randn(g, d_sae, scale=0.5), _randn(g, d_sae, scale=0.5), _randn(g, d_in))
    return [lambda s=s: make(s) for s in range(4)]


def _gated_encode(x, W, b_gate, r_mag, b_mag, b_dec):
    sae = _sae("gated", {"W_enc": W, "b_gate": b_gate, "r_mag": r_mag, "b_mag": b_mag, "b_dec": b_dec})
    with torch.no_grad():
        return sae.encode(x), (x - b_dec) @ W + b_gate


def _gated_variant(exp=True, gate_path="gate", subtract_b_dec=True, scale_gate=False):
    def encode(x, W, b_gate, r_mag, b_mag, b_dec):
        shared = ((x - b_dec) if subtract_b_dec else x) @ W
        factor = r_mag.exp() if exp else r_mag
        gate = shared * (factor if scale_gate else 1) + b_gate
        magnitude = shared * factor + b_mag
        fires = gate > 0 if gate_path == "gate" else magnitude > 0
        return fires * torch.relu(magnitude), gate
    return encode


GATED_ENCODE = Exercise(
    "gated_encode", "04", "f = 1[pi_gate > 0] * ReLU(pi_mag), returned with pi_gate",
    _gated_cases(), _gated_encode, [
        Mistake("the magnitude path scales W's columns by exp(r_mag), not by r_mag itself (r_mag = 0 must leave "
                "W unchanged).", variant=_gated_variant(exp=False)),
        Mistake("whether a latent fires is decided by the gate path: multiply ReLU(pi_mag) by (pi_gate > 0), not "
                "by the sign of the magnitude.", variant=_gated_variant(gate_path="magnitude")),
        Mistake("exp(r_mag) rescales the magnitude path only; the gate path uses W as it is.",
                variant=_gated_variant(scale_gate=True)),
        Mistake("both paths read x - b_dec: subtract b_dec before multiplying by W.",
                variant=_gated_variant(subtract_b_dec=False)),
    ])


def _step_cases():
    def make(seed):
        g = _gen(seed)
        theta = torch.rand(12, generator=g) + 0.5
        h = theta + _randn(g, 30, 12, scale=0.4)  # many pre-activations near their threshold
        return h, theta, 0.3, torch.rand(30, 12, generator=g)  # the last: weights of the upstream gradient
    return [lambda s=s: make(s) for s in range(3)]


def _run_step(step_class, args):
    """Apply the autograd function, backpropagate a weighted sum: its output and the gradients of h and theta."""
    h, theta, eps, weights = args
    h, theta = h.clone().requires_grad_(), theta.clone().requires_grad_()
    out = step_class.apply(h, theta, eps)
    (out * weights).sum().backward()
    zeros = torch.zeros_like
    return (out.detach(), zeros(theta) if theta.grad is None else theta.grad,
            zeros(h) if h.grad is None else h.grad)


def _step_variant(sign=-1.0, per_eps=True, width=0.5, use_grad=True, grad_h=False):
    class Step(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h, theta, eps):
            ctx.save_for_backward(h, theta)
            ctx.eps = eps
            return (h > theta).float()

        @staticmethod
        def backward(ctx, grad):
            h, theta = ctx.saved_tensors
            near = ((h - theta).abs() < ctx.eps * width).float()
            height = sign / ctx.eps if per_eps else sign
            grad_theta = height * near * (grad if use_grad else 1)
            return grad_theta if grad_h else None, grad_theta.sum(0), None
    return Step


STEP_GRADIENT = Exercise(
    "StepWithThresholdGradient.backward", "04", "return (None, dL0/dtheta summed over the batch, None)",
    _step_cases(), _Step, [
        Mistake("return None as the gradient for h: the L0 term must move the thresholds, not the pre-activations "
                "(it would push every pre-activation down).",
                variant=_step_variant(grad_h=True), symptom=_gradient_reaches_last),
        Mistake("the gradient has the wrong sign: raising theta lowers L0, so dL0/dtheta = -(1/eps) * ...",
                variant=_step_variant(sign=1.0)),
        Mistake("the rectangle kernel's height is 1/eps: multiply the window by -(1 / ctx.eps), not just -1.",
                variant=_step_variant(per_eps=False)),
        Mistake("the window is |h - theta| < eps / 2 (a rectangle of total width eps); yours is twice as wide.",
                variant=_step_variant(width=1.0)),
        Mistake("multiply by the incoming gradient `grad` before summing over the batch: backward returns the "
                "chain rule's product, not the local derivative alone.", variant=_step_variant(use_grad=False)),
    ], run=_run_step)


def _jumprelu_cases():
    def make(seed, ties):
        g = _gen(seed)
        d_in, d_sae = 16, 40
        log_threshold = torch.rand(d_sae, generator=g).mul(0.6).add(0.2).log()
        x, b_dec = _randn(g, 24, d_in), _randn(g, d_in)
        b_enc = _randn(g, d_sae, scale=0.3)
        if ties:  # zero tokens and b_dec: pre-activations exactly at the threshold
            x[:6], b_dec, b_enc = 0.0, torch.zeros(d_in), log_threshold.exp()
        return x, _randn(g, d_in, d_sae, scale=0.4), b_enc, b_dec, log_threshold
    return [lambda s=s, t=t: make(s, t) for s, t in ((0, False), (1, True), (2, False))]


def _jumprelu_encode(x, W_enc, b_enc, b_dec, log_threshold):
    sae = _sae("jumprelu", {"W_enc": W_enc, "b_enc": b_enc, "b_dec": b_dec, "log_threshold": log_threshold})
    with torch.no_grad():
        return sae.encode(x)


def _jumprelu_variant(compare=torch.gt, log_space=False, subtract_b_dec=True):
    def encode(x, W_enc, b_enc, b_dec, log_threshold):
        pre = ((x - b_dec) if subtract_b_dec else x) @ W_enc + b_enc
        return pre * compare(pre, log_threshold if log_space else log_threshold.exp())
    return encode


JUMPRELU_ENCODE = Exercise(
    "jumprelu_encode", "04", "f = h * 1[h > theta] with theta = exp(log_threshold)",
    _jumprelu_cases(), _jumprelu_encode, [
        Mistake("a pre-activation exactly at the threshold must not fire: compare with >, not >=.",
                variant=_jumprelu_variant(compare=torch.ge)),
        Mistake("you compared with log_threshold itself: the threshold is theta = log_threshold.exp().",
                variant=_jumprelu_variant(log_space=True)),
        Mistake("the encoder reads x - b_dec: subtract b_dec before multiplying by W_enc.",
                variant=_jumprelu_variant(subtract_b_dec=False)),
        Mistake("that is a ReLU: a JumpReLU zeroes everything up to its threshold theta, not up to 0.",
                variant=lambda x, W_enc, b_enc, b_dec, log_threshold: torch.relu((x - b_dec) @ W_enc + b_enc)),
    ])


# --------------------------------------------------------------------------- 05: explained variance and KL


def _explained_variance_cases():
    def make(seed):
        g = _gen(seed)
        spread = torch.rand(16, generator=g).mul(3).add(0.2)  # dimensions of very different variance
        x = _randn(g, 16, scale=4) + _randn(g, 80, 16) * spread
        return x, x + _randn(g, 80, 16, scale=0.4) * spread.sqrt()
    return [lambda s=s: make(s) for s in range(3)]


def _explained_variance(x, x_hat):
    return 1 - (x - x_hat).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum()


EXPLAINED_VARIANCE = Exercise(
    "explained_variance", "05", "1 - sum of squared errors / sum of squared deviations of x from its mean",
    _explained_variance_cases(), _explained_variance, [
        Mistake("you divided by sum ||x||², the variance about zero. Subtract the mean over tokens first: "
                "(x - x.mean(dim=0)).pow(2).sum(); otherwise getting the mean right already scores high.",
                variant=lambda x, x_hat: 1 - (x - x_hat).pow(2).sum() / x.pow(2).sum()),
        Mistake("you averaged an explained variance per dimension. Pool first: one sum of squared errors over "
                "one total variance, so that high-variance dimensions weigh more.",
                variant=lambda x, x_hat: (1 - (x - x_hat).pow(2).sum(0) / (x - x.mean(0)).pow(2).sum(0)).mean()),
        Mistake("you averaged a ratio per token. Pool first: one sum of squared errors over all tokens divided by "
                "one sum of squared deviations.",
                variant=lambda x, x_hat: 1 - ((x - x_hat).pow(2).sum(-1) / (x - x.mean(0)).pow(2).sum(-1)).mean()),
    ])


def _kl_cases():
    def make(seed):
        g = _gen(seed)
        clean = _randn(g, 3, 5, 11, scale=2)
        return clean, clean + _randn(g, 3, 5, 11, scale=0.8)
    return [lambda s=s: make(s) for s in range(3)]


def _kl(p_logits, q_logits):
    """KL(p || q) per position, from logits."""
    p_log, q_log = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1)


KL_DIVERGENCE = Exercise(
    "kl_divergence", "05", "KL(clean || patched) of the next-token distributions, averaged over positions",
    _kl_cases(), lambda clean, patched: _kl(clean, patched).mean(), [
        Mistake("that is KL(patched ‖ clean). The clean distribution comes first: sum p_clean * (log p_clean - "
                "log p_patched). (torch's F.kl_div(input, target) computes KL(target ‖ input).)",
                variant=lambda clean, patched: _kl(patched, clean).mean()),
        Mistake("turn logits into log-probabilities with log_softmax(-1) before using them in the KL formula.",
                variant=lambda clean, patched: (clean.softmax(-1) * (clean - patched)).sum(-1).mean()),
        Mistake("average over positions (.mean()), do not sum: the KL is reported per token.",
                variant=lambda clean, patched: _kl(clean, patched).sum()),
    ])


# --------------------------------------------------------------------------- 06: a latent's F1 against a concept


def _f1_cases():
    def make(seed, fire_rate, concept_rate):
        g = _gen(seed)
        truth = torch.rand(500, generator=g) < concept_rate
        fires = (truth & (torch.rand(500, generator=g) < 0.7)) | (torch.rand(500, generator=g) < fire_rate)
        return fires, truth
    return [lambda s=s, f=f, c=c: make(s, f, c) for s, f, c in ((0, 0.1, 0.2), (1, 0.3, 0.1), (2, 0.05, 0.4))]


def _concept_f1(fires, truth):
    tp = (fires & truth).sum().double()
    return f1_from_counts(tp, fires.sum().double(), truth.sum().double())


def _f1_swapped(fires, truth):
    precision, recall, f1 = _concept_f1(fires, truth)
    return recall, precision, f1


def _f1_arithmetic(fires, truth):
    precision, recall, _ = _concept_f1(fires, truth)
    return precision, recall, (precision + recall) / 2


def _f1_precision_over_all_tokens(fires, truth):
    _, recall, _ = _concept_f1(fires, truth)
    precision = (fires & truth).sum().double() / len(fires)
    return precision, recall, 2 * precision * recall / (precision + recall)


CONCEPT_F1 = Exercise(
    "concept_f1", "06", "precision, recall and F1 of a latent's firing against a concept's labels",
    _f1_cases(), _concept_f1, [
        Mistake("precision and recall are swapped. Precision: of the tokens where the latent fires, the share with "
                "the concept (tp / fires). Recall: of the concept's tokens, the share where it fires (tp / truth).",
                variant=_f1_swapped),
        Mistake("F1 is the harmonic mean 2PR / (P + R), not the arithmetic mean (P + R) / 2.",
                variant=_f1_arithmetic),
        Mistake("precision divides the true positives by the number of tokens where the latent fires, not by all "
                "tokens.", variant=_f1_precision_over_all_tokens),
    ])


# --------------------------------------------------------------------------- 07: steering and clamping


def _steering_sae(seed: int) -> SAE:
    g = _gen(seed)
    d_in, d_sae = 16, 32
    W_dec = F.normalize(_randn(g, d_sae, d_in), dim=1) * torch.rand(d_sae, 1, generator=g).mul(2).add(0.5)
    return _sae("relu", {"W_enc": W_dec.T + _randn(g, d_in, d_sae, scale=0.5), "b_enc": _randn(g, d_sae, scale=0.3),
                         "W_dec": W_dec, "b_dec": _randn(g, d_in, scale=0.5)})


def _steer_cases():
    def make(seed, latent, strength):
        sae = _steering_sae(seed)
        return _randn(_gen(seed + 10), 2, 7, 16, scale=2), sae, latent, strength, 3.5
    return [lambda s=s, i=i, k=k: make(s, i, k) for s, i, k in ((0, 3, 0.5), (1, 17, 2.0), (2, 30, -1.0))]


def _steer_variant(direction="decoder", scaled=True, unit=False):
    def steer(x, sae, latent, strength, max_act):
        d = (sae.W_dec[latent] if direction == "decoder" else sae.W_enc[:, latent]).detach()
        d = F.normalize(d, dim=0) if unit else d
        return x + strength * (max_act if scaled else 1) * d
    return steer


STEER_ACTIVATION = Exercise(
    "steer_activation", "07", "x + strength * max_act * (the latent's decoder row), at every position",
    _steer_cases(), _steer_variant(), [
        Mistake("steer along the latent's decoder row sae.W_dec[latent] (what the latent writes), not its encoder "
                "column sae.W_enc[:, latent] (what it reads).", variant=_steer_variant(direction="encoder")),
        Mistake("strength is in units of the latent's largest activation: multiply the direction by "
                "strength * max_act.", variant=_steer_variant(scaled=False)),
        Mistake("use the decoder row as it is, without normalising it: its length is part of what the latent "
                "writes at activation 1.", variant=_steer_variant(unit=True)),
    ])


def _clamp_cases():
    def make(seed, latent, value):
        return _randn(_gen(seed + 20), 3, 6, 16, scale=2), _steering_sae(seed), latent, value
    return [lambda s=s, i=i, v=v: make(s, i, v) for s, i, v in ((0, 5, 2.0), (1, 11, 0.0), (2, 26, 4.0))]


def _clamp(x, sae, latent, value):
    with torch.no_grad():
        natural = sae.encode(x)[..., latent, None]
        return x + (value - natural) * sae.W_dec[latent]


def _clamp_without_error(x, sae, latent, value):
    with torch.no_grad():
        f = sae.encode(x)
        f[..., latent] = value
        return sae.decode(f)


CLAMP_ACTIVATION = Exercise(
    "clamp_activation", "07", "decode(f with f_latent = value) + the SAE's error, i.e. x + (value - f_i(x)) d_i",
    _clamp_cases(), _clamp, [
        Mistake("keep the SAE's error term: return decode(f') + (x - decode(f)), which is x + (value - f_i(x)) d_i. "
                "Returning decode(f') alone changes every token even when the clamp changes nothing.",
                variant=_clamp_without_error),
        Mistake("that adds value * d_i on every token, which is a steer. A clamp adds (value - f_i(x)) d_i: subtract "
                "the latent's natural value.",
                variant=lambda x, sae, latent, value: x + value * sae.W_dec[latent].detach()),
        Mistake("move along the latent's decoder row sae.W_dec[latent], not its encoder column sae.W_enc[:, latent].",
                variant=lambda x, sae, latent, value: x + (value - sae.encode(x)[..., latent, None]).detach()
                * sae.W_enc[:, latent].detach()),
    ])


# --------------------------------------------------------------------------- the public checks

CHECKS: dict[str, Exercise] = {e.name: e for e in (
    MEAN_COSINE, RELU_SAE_FORWARD, RELATIVE_BIAS, TOPK_ENCODE, AUXK_LOSS, GATED_ENCODE, STEP_GRADIENT,
    JUMPRELU_ENCODE, EXPLAINED_VARIANCE, KL_DIVERGENCE, CONCEPT_F1, STEER_ACTIVATION, CLAMP_ACTIVATION)}


def check_mean_cosine(fn: Callable) -> None:
    MEAN_COSINE.check(fn)


def check_relu_sae_forward(fn: Callable) -> None:
    RELU_SAE_FORWARD.check(fn)


def check_relative_bias(fn: Callable) -> None:
    RELATIVE_BIAS.check(fn)


def check_topk_encode(fn: Callable) -> None:
    TOPK_ENCODE.check(fn)


def check_auxk_loss(fn: Callable) -> None:
    AUXK_LOSS.check(fn)


def check_gated_encode(fn: Callable) -> None:
    GATED_ENCODE.check(fn)


def check_step_gradient(step_class: type[torch.autograd.Function]) -> None:
    STEP_GRADIENT.check(step_class)


def check_jumprelu_encode(fn: Callable) -> None:
    JUMPRELU_ENCODE.check(fn)


def check_explained_variance(fn: Callable) -> None:
    EXPLAINED_VARIANCE.check(fn)


def check_kl_divergence(fn: Callable) -> None:
    KL_DIVERGENCE.check(fn)


def check_concept_f1(fn: Callable) -> None:
    CONCEPT_F1.check(fn)


def check_steer_activation(fn: Callable) -> None:
    STEER_ACTIVATION.check(fn)


def check_clamp_activation(fn: Callable) -> None:
    CLAMP_ACTIVATION.check(fn)
