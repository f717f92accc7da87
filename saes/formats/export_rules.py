"""Which of our SAEs each foreign format can express: one table, decided by inference rule.

A foreign file stores an inference rule, not a training method, so what matters is how `encode`
picks features: relu everywhere (SAELens standard), the top k per token (topk in both tools), or
pre > a per-feature threshold (SAELens jumprelu: our JumpReLU, and BatchTopK / Feature Choice /
Mutual Choice under their threshold inference rule, which each declares as `threshold_inference`). Matching pursuit, and the batch rules, depend
on more than one token's pre-activations and have no foreign counterpart.
"""

from __future__ import annotations

from saes import JumpReLUSAE, ReLUSAE, SparseAutoencoder, TopKSAE
from workbench.errors import WorkbenchError


def _why_not(sae: SparseAutoencoder, fmt: str, valid: str) -> WorkbenchError:
    return WorkbenchError(
        f"a {sae.architecture!r} SAE cannot be written as {fmt}: its inference rule has no {fmt} counterpart "
        f"({fmt} can hold {valid})"
    )


def saelens_rule(sae: SparseAutoencoder) -> str:
    """The SAELens architecture that computes what `sae.encode` computes."""
    valid = "relu, topk, and threshold rules: jumprelu, batchtopk/feature_choice/mutual_choice with inference=threshold"
    if type(sae).threshold_inference:  # the architecture's policy: a per-token threshold rule besides the batch one
        if sae.cfg.inference != "threshold":
            raise WorkbenchError(
                f"a {sae.architecture!r} SAE with inference={sae.cfg.inference!r} picks features across the batch, "
                f"which SAELens cannot express; save it with inference='threshold' to export its threshold rule"
            )
        return "jumprelu"
    table = {TopKSAE: "topk", JumpReLUSAE: "jumprelu", ReLUSAE: "standard"}
    if type(sae) in table:
        return table[type(sae)]
    raise _why_not(sae, "SAELens", valid)


def sparsify_rule(sae: SparseAutoencoder) -> str:
    """The sparsify activation that computes what `sae.encode` computes (sparsify only has top-k)."""
    if type(sae) is TopKSAE:
        return "topk"
    raise _why_not(sae, "sparsify", "topk only")
