"""Pure-Python core of TreeMTL's branch-point recommender (Zhang et al., "A Tree-Structured Multi-Task Model
Recommender", paper text: shared/papers/treemtl-recommender.txt): layout enumeration (Sec. 3.2), the two-task
based accuracy estimator with SVD-entropy task weights (Sec. 3.1, Eqs. 1-2) and a budgeted top-k recommender."""

from mtlbench.treemtl.estimate import (PairTable, RESNET34_STAGE_MACS, Recommendation, layout_cost, recommend,
                                       resnet34_stage_params, score, svd_entropy, task_weights)
from mtlbench.treemtl.layouts import Layout, branch_block, enumerate_layouts, is_valid, layout_key
from mtlbench.treemtl.pair_table import read_pair_table

__all__ = ["RESNET34_STAGE_MACS", "Layout", "PairTable", "Recommendation", "branch_block", "enumerate_layouts",
           "is_valid", "layout_cost", "layout_key", "read_pair_table", "recommend", "resnet34_stage_params", "score",
           "svd_entropy", "task_weights"]
