"""The Parquet schema of every table mtlbench writes. The sweep, FastCAR and the report all use these unchanged.

Tables (one file each in a results folder, consolidated from per-run fragments):

- ``runs``: one row per run (FastCAR or one MTL cell): configuration, status, best-validation-epoch and
  last-epoch test metrics, timings, environment.
- ``epochs``: one row per run and epoch: learning rate, train losses, validation metrics, seconds.
- ``weights``: one row per run, epoch and task: the mean (and std) of the loss weights the weighting produced.
- ``predictions``: one row per run, test image and checkpoint (``best`` / ``last``): true and predicted class and target.
- ``label_search``: one row per FastCAR one-epoch-test attempt: gap, constants, mean gradient, seconds, accepted.
- ``sharing``: one row per run, merge epoch, layer and task pair of an architecture that ties kernels across tasks
  (MTAL): kernels, pairs above the threshold, newly tied, share ratio, similarity.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 2   # 2: resumed_from_epoch, checkpoint_s, executor in runs
# A nullable column added since (peak_mem_method) keeps the version: fragments are read with this schema, and a
# column a fragment lacks reads as null, so folders written before it stay readable and resumable.

#: not_applicable: the weighting cannot train the architecture (e.g. a gradient weighting on Tree-b0, which shares no
#: parameters); recorded with the reason as its message, never trained, never counted as failed.
STATUSES = ("ok", "failed", "diverged", "not_applicable")
METRICS = ("accuracy", "mse", "rmse", "mae", "mape", "within8")

_metric_fields = [pa.field(f"{which}_{m}", pa.float64()) for which in ("best", "last") for m in METRICS]

RUNS = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("sweep", pa.string()),
    pa.field("kind", pa.string(), nullable=False),            # fastcar | mtl
    pa.field("status", pa.string(), nullable=False),          # ok | failed | diverged | not_applicable
    pa.field("message", pa.string()),
    pa.field("failed_epoch", pa.int64()),
    pa.field("architecture", pa.string()),
    pa.field("variant", pa.string()),                         # [arch_sweep] option values, e.g. rho=0.4
    pa.field("setting", pa.string()),                         # [ablation] change, e.g. protocol.lr=0.0003
    pa.field("weighting", pa.string()),
    pa.field("decoder", pa.string()),
    pa.field("target_scaling", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("epochs", pa.int64()),
    pa.field("epochs_run", pa.int64()),
    pa.field("batch_size", pa.int64()),
    pa.field("img_size", pa.int64()),
    pa.field("pretrained", pa.bool_()),
    pa.field("dataset", pa.string()),
    pa.field("data_fingerprint", pa.string()),
    pa.field("num_classes", pa.int64()),
    pa.field("n_train", pa.int64()),
    pa.field("n_valid", pa.int64()),
    pa.field("n_test", pa.int64()),
    pa.field("config_json", pa.string()),
    pa.field("hparams_json", pa.string()),                    # the method defaults actually used
    # The architecture's own final structure, at the last epoch, for architectures that learn one (null otherwise):
    # LTB {"tree": [[parent of each branch] per stage 1..4], "stages": [...]}.
    pa.field("arch_state_json", pa.string()),
    pa.field("best_epoch", pa.int64()),
    # The spread (max - min, points) of validation accuracy and MAPE over the last stability_epochs epochs, and
    # whether it exceeds mtlbench.stability's thresholds (null: too few epochs to tell).
    pa.field("stability_epochs", pa.int64()),
    pa.field("val_accuracy_spread", pa.float64()),
    pa.field("val_mape_spread", pa.float64()),
    pa.field("unstable", pa.bool_()),
    *_metric_fields,
    pa.field("best_confusion_json", pa.string()),
    pa.field("last_confusion_json", pa.string()),
    pa.field("total_s", pa.float64()),
    pa.field("label_search_s", pa.float64()),
    pa.field("train_s", pa.float64()),
    pa.field("epoch_mean_s", pa.float64()),
    pa.field("train_images_per_s", pa.float64()),
    pa.field("latency_b1_ms", pa.float64()),
    pa.field("latency_batch_ms", pa.float64()),
    pa.field("params", pa.int64()),
    pa.field("backbone_params", pa.int64()),                  # every parameter but the task decoders'
    pa.field("shared_params", pa.int64()),                    # what gradient weightings combine (get_share_params)
    # TreeMTL tree models (Tree-b0..b4, HPS = b5): the branch point, the canonical layout key
    # (mtlbench.treemtl.layouts) and the backbone's MACs per image at img_size (null for other architectures).
    pa.field("branch_point", pa.int64()),
    pa.field("layout", pa.string()),
    pa.field("backbone_macs", pa.float64()),
    # MTAL: the trunk's parameters with tied kernels counted once, and the fraction of its filters tied, at the end
    pa.field("unique_trunk_params", pa.int64()),
    pa.field("kernel_share_ratio", pa.float64()),
    # This run's own peak, MiB. peak_mem_method says how it was measured (mtlbench.memory):
    #   cuda_max_allocated: torch.cuda.max_memory_allocated, reset at the run's start (tensors only, no cache);
    #   cpu_heap_sampled: peak of the C heap's in-use bytes (glibc mallinfo2: every arena plus mmapped blocks),
    #     sampled every 10 ms, above its value at the run's start;
    #   cpu_rss_sampled (no mallinfo2: not glibc, or glibc < 2.33): peak of the process's anonymous resident
    #     memory (file-backed pages such as the memory-mapped image cache left out), sampled every 10 ms, above its
    #     value at the run's start;
    #   cpu_maxrss_process: no /proc, so the process's lifetime peak RSS (includes earlier runs in the process).
    # Rows written before peak_mem_method existed read it as null: a CPU figure there is the lifetime peak.
    pa.field("peak_mem_mb", pa.float64()),
    pa.field("peak_mem_method", pa.string()),
    pa.field("concurrency", pa.int64()),                      # cells running at once on the same device
    pa.field("executor", pa.string()),                        # sequential | local | ray
    pa.field("resumed_from_epoch", pa.int64()),               # continued from a mid-run checkpoint of this epoch
    pa.field("checkpoint_s", pa.float64()),                   # seconds spent writing checkpoints
    # Parts of total_s besides train_s and checkpoint_s, disjoint from them and from each other. All null in rows
    # written before they existed and in not-applicable runs; setup_s null when the setup failed, latency_s when the
    # run did not finish ok (train_s and eval_s are then what it got through, possibly 0):
    #   setup_s: before the training loop, what no other part counts: building the model and the optimiser, loading
    #     a checkpoint; for FastCAR also the label search's builds, its rejected attempts and the accepted attempt's
    #     untimed bookkeeping (label_search_s counts every attempt whole, so it overlaps setup_s, train_s, eval_s);
    #   eval_s: the evaluation passes: validation after every epoch and the final test predictions (null for a run
    #     resumed, once or more, from a checkpoint written before eval_s existed);
    #   latency_s: timing the inference latency (latency_b1_ms, latency_batch_ms).
    # train_s and eval_s count every epoch, saved with a checkpoint; setup_s and checkpoint_s, this process only;
    # total_s, this process and the earlier ones up to their last checkpoint. What no part counts (metrics, records,
    # an architecture's epoch-end work, an earlier process's setup) is the rest.
    pa.field("setup_s", pa.float64()),
    pa.field("eval_s", pa.float64()),
    pa.field("latency_s", pa.float64()),
    pa.field("device", pa.string()),
    pa.field("torch_version", pa.string()),
    pa.field("torchvision_version", pa.string()),
    pa.field("libmtl_version", pa.string()),
    pa.field("python_version", pa.string()),
    pa.field("mtlbench_version", pa.string()),
    pa.field("git_commit", pa.string()),
    pa.field("hostname", pa.string()),
    pa.field("started_at", pa.timestamp("us", tz="UTC")),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    pa.field("schema_version", pa.int64()),
])

EPOCHS = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("epoch", pa.int64(), nullable=False),            # 1-based
    pa.field("lr", pa.float64()),
    pa.field("seconds", pa.float64()),
    pa.field("train_loss", pa.float64()),                     # sum of task losses (FastCAR: hybrid MSE)
    pa.field("train_loss_cls", pa.float64()),
    pa.field("train_loss_reg", pa.float64()),
    pa.field("val_loss", pa.float64()),
    pa.field("val_accuracy", pa.float64()),
    pa.field("val_mse", pa.float64()),
    pa.field("val_mape", pa.float64()),
    pa.field("val_mae", pa.float64()),                        # TreeMTL's pair tables read it (null before it existed)
])

WEIGHTS = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("epoch", pa.int64(), nullable=False),
    pa.field("task", pa.string(), nullable=False),            # cls | reg
    pa.field("weight", pa.float64()),
    pa.field("weight_std", pa.float64()),
])

PREDICTIONS = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    # best | last: which epoch's weights made the predictions (the best-validation or the last epoch). The column
    # name is kept so that results folders written before stay readable; it is not a mid-run checkpoint.
    pa.field("checkpoint", pa.string(), nullable=False),
    pa.field("index", pa.int64()),
    pa.field("relpath", pa.string()),
    pa.field("true_class", pa.int64()),
    pa.field("pred_class", pa.int64()),
    pa.field("true_target", pa.float64()),
    pa.field("pred_target", pa.float64()),
])

LABEL_SEARCH = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("attempt", pa.int64()),
    pa.field("gap", pa.float64()),
    pa.field("constants_json", pa.string()),
    pa.field("centre", pa.float64()),
    pa.field("scale", pa.float64()),      # hybrid labels divided by it (label_scale unit); null: written before, 1
    pa.field("mean_grad", pa.float64()),  # as measured; the one-epoch test compares mean_grad * scale
    pa.field("seconds", pa.float64()),
    pa.field("accepted", pa.bool_()),
])

SHARING = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("epoch", pa.int64(), nullable=False),            # the epoch whose end the merge followed
    pa.field("layer", pa.string(), nullable=False),           # the convolution's name in the trunk
    pa.field("task_a", pa.string(), nullable=False),
    pa.field("task_b", pa.string(), nullable=False),
    pa.field("kernels", pa.int64()),                          # filters per task in the layer
    pa.field("above_rho", pa.int64()),                        # filter pairs whose similarity exceeds the threshold
    pa.field("newly_tied", pa.int64()),                       # pairs tied by this merge
    pa.field("ratio", pa.float64()),                          # fraction of the pair's filters tied after it
    pa.field("max_similarity", pa.float64()),
    pa.field("mean_similarity", pa.float64()),
])

TABLES: dict[str, pa.Schema] = {
    "runs": RUNS, "epochs": EPOCHS, "weights": WEIGHTS, "predictions": PREDICTIONS, "label_search": LABEL_SEARCH,
    "sharing": SHARING,
}


def to_arrow(name: str, rows: list[dict]) -> pa.Table:
    """Rows (dicts) -> a table with exactly the named schema; missing keys become nulls, unknown keys are errors."""
    schema = TABLES[name]
    known = set(schema.names)
    for row in rows:
        extra = set(row) - known
        if extra:
            raise KeyError(f"table {name!r} has no column(s) {sorted(extra)}")
        if name == "runs" and row.get("status") not in STATUSES:
            raise ValueError(f"runs row {row.get('run_id')!r}: status {row.get('status')!r} is not one of {STATUSES}")
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def empty(name: str) -> pa.Table:
    return TABLES[name].empty_table()
