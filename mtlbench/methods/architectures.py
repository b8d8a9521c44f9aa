"""Registry of MTL architectures with their paper and the one table of default hyper-parameters.

``img_size`` (MMoE / CGC gates) is filled in from the protocol's image side when a model is built.
"""

from __future__ import annotations

from mtlbench.libmtl_compat import libmtl_architecture
from mtlbench.methods.ltb import EVAL_TREES, LTB, LTB_DEFAULTS, TAU_SCHEDULES
from mtlbench.registry import Registry

ARCHITECTURES: Registry = Registry("architecture")

ARCHITECTURES.add("HPS", libmtl_architecture.HPS,
                  reference="Caruana, Multitask Learning: A Knowledge-Based Source of Inductive Bias, ICML 1993",
                  summary="hard parameter sharing: one shared ResNet-18 encoder")
ARCHITECTURES.add("Cross_stitch", libmtl_architecture.Cross_stitch,
                  reference="Misra et al., Cross-stitch Networks for Multi-task Learning, CVPR 2016",
                  summary="one ResNet-18 per task, linear cross-stitch units between stages")
# LibMTL gives no default expert count; 3 shared experts (MMoE) and 1 shared + 1 per task (CGC) keep the
# number of ResNet-18 copies equal (3) so the two gate-based architectures are comparable.
ARCHITECTURES.add("MMoE", libmtl_architecture.MMoE,
                  reference="Ma et al., Modeling Task Relationships in Multi-task Learning with Multi-gate "
                            "Mixture-of-Experts, KDD 2018",
                  defaults={"num_experts": [3]},
                  summary="shared ResNet-18 experts mixed by per-task softmax gates on the input")
ARCHITECTURES.add("MTAN", libmtl_architecture.MTAN,
                  reference="Liu et al., End-to-End Multi-Task Learning with Attention, CVPR 2019",
                  summary="shared ResNet-18 with per-task attention modules at every stage")
ARCHITECTURES.add("CGC", libmtl_architecture.CGC,
                  reference="Tang et al., Progressive Layered Extraction (PLE), RecSys 2020",
                  defaults={"num_experts": [1, 1, 1]},
                  summary="shared + task-specific ResNet-18 experts mixed by per-task gates")


ARCHITECTURES.add("LTB", LTB,
                  reference="Guo et al., Learning to Branch for Multi-Task Learning, ICML 2020",
                  defaults=dict(LTB_DEFAULTS), choices={"tau_schedule": TAU_SCHEDULES, "eval_tree": EVAL_TREES},
                  summary="per-task ResNet-18 stages with Gumbel-softmax learned branching; trains as LibMTL main "
                          "does; evaluates the argmax tree where LibMTL samples a fresh one, so that the validation "
                          "score picking the best epoch judges one fixed network (written here)")
