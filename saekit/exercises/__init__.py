"""
Classroom exercises: the course notebooks with their key functions left for the learner to write.

The solution notebooks (notebooks/01–07) stay the source of truth. Inside a code cell, a block
between the whole-line comments `# BEGIN SOLUTION` and `# END SOLUTION` is the answer to an
exercise; `python -m saekit.exercises` writes exercises/NN_name.ipynb with each block replaced by
`raise NotImplementedError(...)` and every output cleared (`--check` says which are stale; the
tests fail when they are). See `saekit.exercises.generate`.

After each exercise the notebook calls its check, e.g. `check_topk_encode(topk_encode)`: it runs
the learner's function and a reference (saekit's own implementation where saekit has one) on
fixed seeded inputs, and when they disagree it names the common mistake it recognises, by
comparing the learner's output with the outputs of known wrong variants. See
`saekit.exercises.checks`.
"""

from saekit.exercises.checks import (
    CHECKS,
    ExerciseFailure,
    check_auxk_loss,
    check_clamp_activation,
    check_concept_f1,
    check_explained_variance,
    check_gated_encode,
    check_jumprelu_encode,
    check_kl_divergence,
    check_mean_cosine,
    check_relative_bias,
    check_relu_sae_forward,
    check_steer_activation,
    check_step_gradient,
    check_topk_encode,
)

__all__ = ["CHECKS", "ExerciseFailure", "check_auxk_loss", "check_clamp_activation", "check_concept_f1",
           "check_explained_variance", "check_gated_encode", "check_jumprelu_encode", "check_kl_divergence",
           "check_mean_cosine", "check_relative_bias", "check_relu_sae_forward", "check_steer_activation",
           "check_step_gradient", "check_topk_encode"]
