"""A personalization result from the library -> the files of a run: the same per-client CSV,
summary and HTML report as ``fedp13n run`` writes.

``fedp13n.write_personalization_report(result, "out")`` takes what a
``build_personalization_eval(...)`` call returned (a
:class:`~fedp13n.personalization.result.PersonalizationResult`) and writes into ``out``:
``personalization.json`` (the full result), ``per_client.csv`` (one row per client x
strategy x evaluated epoch), ``summary.json`` and ``report.html`` with its PNGs, in the
run-directory format of :mod:`fedp13n.rundir.layout`, so ``fedp13n report`` and
``fedp13n compare`` read the folder as they read a run's. What a library result does not
carry is said in the report where it would be: FedAvg's training curves (unless the
rounds' metrics are passed) and the run's configuration (there is none).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedp13n.rundir import layout as rd
from fedp13n.rundir.lock import LOCK_FILE
from fedp13n.utils.fs import atomic_write, write_csv

#: What in a folder marks it as the output of ``fedp13n run`` (never overwritten here).
_RUN_MARKERS = (rd.CONFIG, rd.CHECKPOINTS, rd.GLOBAL_WEIGHTS, LOCK_FILE)


def per_client_rows(result: Mapping[str, Any], train_sizes: Mapping[str, int]) -> list[dict]:
    """The ``per_client.csv`` rows of a result in its JSON form
    (:meth:`PersonalizationResult.to_dict`): one per client x strategy x evaluated epoch
    (every nested mapping with an ``accuracy`` list), in the result's order."""
    base = result[rd.BASELINE_KEY]
    return [
        {
            "client_id": cid,
            "num_train_examples": train_sizes[cid],
            "num_test_examples": m["num_test_examples"][i],
            "strategy": strategy,
            "epoch": epoch,
            "loss": m["loss"][i],
            "accuracy": m["accuracy"][i],
            "baseline_loss": base["loss"][i],
            "baseline_accuracy": base["accuracy"][i],
        }
        for strategy, epoch, m in _evaluated(result)
        for i, cid in enumerate(result["client_ids"])
    ]


def _evaluated(result: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(strategy, epoch key, metrics) of every evaluation with an ``accuracy``, in order."""
    return [
        (strategy, epoch, m)
        for strategy, metrics in result.items()
        if strategy not in rd.RESERVED_KEYS and isinstance(metrics, Mapping)
        for epoch, m in metrics.items()
        if isinstance(m, Mapping) and "accuracy" in m
    ]


def write_personalization_report(
    result: Mapping[str, Any],
    output_dir: str | Path,
    *,
    train_sizes: Any,
    fedavg_metrics: Sequence[Any] | None = None,
    report: bool = True,
) -> Path:
    """Write a library personalization result as a run's files; returns the report's path
    (``summary.json``'s with ``report=False``).

    Args:
        result: what ``build_personalization_eval(...)(weights, clients)`` returned (or
            its :meth:`~PersonalizationResult.to_dict` form): classification metrics as
            :func:`fedp13n.evaluate_fn` and :func:`fedp13n.build_personalize_fn` report
            them (``loss``, ``accuracy``, ``num_test_examples`` per evaluated epoch).
        output_dir: the folder to write into (created if needed). It must not be a
            ``fedp13n run`` output folder; files of an earlier call here are replaced.
        train_sizes: each evaluated client's number of training examples (the report
            plots the gain against it): the :class:`~fedp13n.ClientData` the clients'
            ``train_data`` came from, or a mapping client id -> count.
        fedavg_metrics: the ``RoundMetrics`` (or their ``as_dict()``) of the FedAvg rounds
            that trained the global model, for the report's training curves; without
            them the report says it has none.
        report: also write ``report.html`` and its PNGs (needs matplotlib).

    ``summary.json``'s means are the plain means over the result's clients, exactly as
    for a run. The report has no configuration section content (a library result has
    no ``config.toml``) and says so, as it says when there are no FedAvg curves.

    Raises:
        TypeError: ``result`` is not a personalization result; ``train_sizes`` of the
            wrong kind.
        ValueError: a result without clients or without accuracies; a client missing
            from ``train_sizes``; ``output_dir`` is a file or a ``fedp13n run`` folder.
    """
    data = _result_dict(result)
    ids = data["client_ids"]
    _check_reportable(data)
    sizes = _train_sizes(train_sizes, ids)
    rounds = _fedavg_rows(fedavg_metrics)
    out = _output_dir(output_dir)

    from fedp13n.reporting.summary import summarize_run, write_summary_json

    _write_result_files(out, data, sizes, rounds)
    summary = summarize_run(out)
    path = write_summary_json(out, summary)
    if not report:
        return path
    return _write_library_report(out, summary, fedavg=rounds is not None)


def _result_dict(result: Any) -> dict[str, Any]:
    """A personalization result (or its dict form) as its dict form, client ids as text."""
    from fedp13n.personalization.result import PersonalizationResult

    if isinstance(result, PersonalizationResult):
        data = result.to_dict()
    elif isinstance(result, Mapping) and "client_ids" in result:
        data = PersonalizationResult.from_dict(result).to_dict()
    else:
        raise TypeError(
            f"result must be what build_personalization_eval(...)(weights, clients) returned "
            f"(a PersonalizationResult), got a {type(result).__name__}."
        )
    data["client_ids"] = [str(c) for c in data["client_ids"]]
    return data


def _write_result_files(
    out: Path, data: Mapping[str, Any], sizes: Mapping[str, int], rounds: list[dict] | None
) -> None:
    """A run's result files in ``out`` (an earlier call's that are not this result's gone)."""
    atomic_write(out / rd.PERSONALIZATION, json.dumps(data, indent=1))
    write_csv(out / rd.PER_CLIENT, rd.PER_CLIENT_COLUMNS, per_client_rows(data, sizes))
    if rounds is None:  # an earlier call's FedAvg log: not this result's training
        (out / rd.FEDAVG_METRICS).unlink(missing_ok=True)
    else:
        write_csv(out / rd.FEDAVG_METRICS, rd.FEDAVG_COLUMNS, rounds)
    for stale in (rd.TUNING, rd.REPORT):
        (out / stale).unlink(missing_ok=True)


def _write_library_report(out: Path, summary: Any, *, fedavg: bool) -> Path:
    """``report.html`` of a library result, with a note of what such a result lacks."""
    from fedp13n.reporting import html
    from fedp13n.reporting.report import write_report
    from fedp13n.reporting.summary import ReportWarning

    note = html.note("Missing information.", library_note(fedavg=fedavg))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_report(out, summary=summary, note=note)
    for w in caught:
        # the "no FedAvg curves" advice is for run folders; the report itself says it
        if not (issubclass(w.category, ReportWarning) and rd.FEDAVG_METRICS in str(w.message)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return path


def library_note(*, fedavg: bool) -> str:
    """The report's plain statement of what a library result does not carry."""
    missing = [
        f"no run configuration ({rd.CONFIG}): the data set, the model and the strategies' "
        "settings are not recorded here"
    ]
    if not fedavg:
        missing.append(
            "no FedAvg rounds (pass fedavg_metrics=[...], the RoundMetrics of process.next, "
            "for the training curves)"
        )
    return (
        "From a library result (fedp13n.write_personalization_report of a "
        "build_personalization_eval result): " + "; ".join(missing) + "."
    )


def _check_reportable(data: Mapping[str, Any]) -> None:
    if not data["client_ids"]:
        raise ValueError(
            "the personalization result has no clients (it was called with no client inputs); "
            "there is nothing to report."
        )
    base = data.get(rd.BASELINE_KEY)
    if not isinstance(base, Mapping) or not {"loss", "accuracy", "num_test_examples"} <= set(base):
        raise ValueError(
            f"the result's {rd.BASELINE_KEY} have no 'loss', 'accuracy' and "
            "'num_test_examples': the report is about per-client classification accuracy; "
            "use fedp13n.evaluate_fn as the baseline_evaluate_fn."
        )
    if not _evaluated(data):
        raise ValueError(
            "no strategy in the result reports an accuracy per evaluated epoch "
            "({'epoch_1': {'accuracy': [...], 'loss': [...], 'num_test_examples': [...]}}, "
            "as fedp13n.build_personalize_fn does): nothing to compare with the baseline."
        )


def _train_sizes(train_sizes: Any, ids: Sequence[str]) -> dict[str, int]:
    size_of = getattr(train_sizes, "size", None)
    if isinstance(train_sizes, Mapping):
        lookup = train_sizes.get
    elif callable(size_of) and hasattr(train_sizes, "client_ids"):
        known = set(map(str, train_sizes.client_ids))

        def lookup(cid: str) -> Any:
            return size_of(cid) if cid in known else None
    else:
        raise TypeError(
            "train_sizes must be the ClientData the clients' train_data came from, or a "
            f"mapping client id -> number of training examples, got {type(train_sizes).__name__}."
        )
    sizes = {}
    for cid in ids:
        n = lookup(cid)
        if n is None:
            raise ValueError(
                f"train_sizes has no client {cid!r} of the result; give every evaluated "
                "client's number of training examples."
            )
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 0:
            raise TypeError(
                f"train_sizes[{cid!r}] is {n!r}, not a number of examples (a non-negative int)."
            )
        sizes[cid] = int(n)
    return sizes


def _fedavg_rows(fedavg_metrics: Sequence[Any] | None) -> list[dict[str, Any]] | None:
    if fedavg_metrics is None:
        return None
    if isinstance(fedavg_metrics, str | bytes | Mapping) or not isinstance(
        fedavg_metrics, Sequence
    ):
        raise TypeError(
            "fedavg_metrics must be a list of the RoundMetrics process.next returned, got a "
            f"{type(fedavg_metrics).__name__}."
        )
    rows = []
    for i, m in enumerate(fedavg_metrics):
        row = m.as_dict() if hasattr(m, "as_dict") else m
        if not isinstance(row, Mapping) or not {"round", "loss", "accuracy"} <= set(row):
            raise TypeError(
                f"fedavg_metrics[{i}] is a {type(m).__name__}, not a RoundMetrics (or its "
                "as_dict() with 'round', 'loss' and 'accuracy')."
            )
        rows.append({k: _cell(row.get(k)) for k in rd.FEDAVG_COLUMNS})
    return rows


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def _output_dir(output_dir: str | Path) -> Path:
    if not isinstance(output_dir, (str, os.PathLike)) or not str(output_dir).strip():
        raise ValueError(  # Path("") is ".": the report would land in the current folder
            f"output_dir must be a folder for the report (a non-empty str or Path), got "
            f"{output_dir!r}."
        )
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir {out} is a file; give a folder for the report.")
    found = [m for m in _RUN_MARKERS if (out / m).exists()]
    if found:
        raise ValueError(
            f"output_dir {out} holds a 'fedp13n run' (it has {found[0]}); write the library "
            "result into another folder so neither overwrites the other."
        )
    out.mkdir(parents=True, exist_ok=True)
    return out
