"""LibMTL 1.1.5's own architectures, registered with typed options. The architectures written here (LTB, and the
landscape's) register in their own files.

``img_size`` (MMoE / CGC gates) is filled in from the protocol's image side when a model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mtlbench.libmtl_compat import libmtl_architecture as A
from mtlbench.methods.registry import ARCHITECTURES

LIBMTL = "LibMTL 1.1.5"


@dataclass(frozen=True)
class NoOptions:
    """The architecture takes no options."""


# LibMTL gives no default expert count; 3 shared experts (MMoE) and 1 shared + 1 per task (CGC) keep the
# number of ResNet-18 copies equal (3) so the two gate-based architectures are comparable.
@dataclass(frozen=True)
class MMoEOptions:
    num_experts: list[int] = field(default_factory=lambda: [3])          # shared experts


@dataclass(frozen=True)
class CGCOptions:
    num_experts: list[int] = field(default_factory=lambda: [1, 1, 1])    # shared, then one count per task


ARCHITECTURES.add("HPS", A.HPS, options=NoOptions, library=LIBMTL, branch_point=5,   # TreeMTL's Tree-b5
                  reference="Caruana, Multitask Learning: A Knowledge-Based Source of Inductive Bias, ICML 1993",
                  summary="hard parameter sharing: one shared ResNet-18 encoder")
ARCHITECTURES.add("Cross_stitch", A.Cross_stitch, options=NoOptions, library=LIBMTL,
                  reference="Misra et al., Cross-stitch Networks for Multi-task Learning, CVPR 2016",
                  summary="one ResNet-18 per task, linear cross-stitch units between stages")
ARCHITECTURES.add("MMoE", A.MMoE, options=MMoEOptions, library=LIBMTL,
                  reference="Ma et al., Modeling Task Relationships in Multi-task Learning with Multi-gate "
                            "Mixture-of-Experts, KDD 2018",
                  summary="shared ResNet-18 experts mixed by per-task softmax gates on the input")
ARCHITECTURES.add("MTAN", A.MTAN, options=NoOptions, library=LIBMTL,
                  reference="Liu et al., End-to-End Multi-Task Learning with Attention, CVPR 2019",
                  summary="shared ResNet-18 with per-task attention modules at every stage")
ARCHITECTURES.add("CGC", A.CGC, options=CGCOptions, library=LIBMTL,
                  reference="Tang et al., Progressive Layered Extraction (PLE), RecSys 2020",
                  summary="shared + task-specific ResNet-18 experts mixed by per-task gates")
