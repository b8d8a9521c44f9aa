"""One FastCAR run (FastCAR paper, sec. 3): label transformation, one-epoch test with bounded retries, then the
remaining epochs of the single-task regressor. A checkpoint holds the chosen transform and the search's records, so a
resumed run does not search again."""

from __future__ import annotations

import json
from dataclasses import asdict

from mtlbench.config import FastCARSettings
from mtlbench.fastcar.search import fastcar_trainer, label_search
from mtlbench.run_record import RunRecord
from mtlbench.records.rows import rows
from mtlbench.train.loop import EpochFn, ProgressFn


def train_fastcar(run: RunRecord, progress: ProgressFn | None) -> EpochFn | None:
    """Build (or resume) the run's trainer through the label search; returns the epoch callback that checkpoints."""
    settings = run.cfg.fastcar or FastCARSettings()
    saved = run.saved()
    if saved is not None:
        transform, run.label_search_s = saved["transform"], saved["label_search_s"]
        run.tables["label_search"] = rows("label_search", saved["label_search"])
        if saved.get("message"):
            run.note(saved["message"])
        run.trainer, _ = fastcar_trainer(run, transform, progress)
        run.resume(run.trainer, saved)
    else:
        run.trainer, transform = label_search(run, settings, progress)
    run.row["hparams_json"] = json.dumps({"fastcar": asdict(settings), "transform": transform.to_dict()},
                                         default=str)
    search = {"transform": transform, "label_search": [dict(r) for r in run.tables["label_search"]],
              "label_search_s": run.label_search_s, "message": run.row.get("message")}
    save = run.saver(lambda: search)
    if save is not None and saved is None:
        save(run.trainer)   # epoch 1 (the accepted search attempt) is done: keep it
    return save
