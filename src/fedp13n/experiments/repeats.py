"""One configuration over several seeds: ``fedp13n run --repeats N``.

Runs the configuration with seeds ``seed, seed+1, ..., seed+N-1``, each a normal run
directory ``<output dir>/seed=<s>/``, one after another, then writes ``repeats.json`` and
``repeats.md`` (:mod:`fedp13n.reporting.repeats`: per row, the mean over seeds +- the
sample standard deviation, beside each seed's own 95% interval over clients).

What the seed changes (:data:`SEED_CHANGES`): the model's initialization, the clients
sampled each round, every local shuffle and dropout mask (FedAvg and personalization),
which personalization clients are evaluated when ``num_eval_clients`` is below their
number, and the examples of the ``synthetic`` data set. The split of clients into
training / validation / personalization clients does not change: it is ``split_seed``'s
(TFF's 42), the same for every seed unless set otherwise.

The folder's settings are saved in ``repeats.toml``. ``--resume`` continues: a seed whose
run finished (its ``summary.json`` exists) is not run again, an interrupted one resumes
from its last checkpoint, and a larger ``--repeats`` adds seeds.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w

from fedp13n.experiments.config import MAX_SEED, ConfigError, ExperimentConfig
from fedp13n.reporting.repeats import write_repeats
from fedp13n.rundir import layout as rd
from fedp13n.rundir.lock import run_dir_lock
from fedp13n.utils.fs import atomic_write

#: The folder's settings: the configuration (its ``seed`` the first) and ``[repeats]``.
REPEATS_FILE = "repeats.toml"
SEED_CHANGES = (
    "the seed changes the model's initialization, the clients sampled each round, local "
    "shuffles and dropout (training and personalization), which personalization clients are "
    "evaluated when num_eval_clients is below their number, and synthetic data; the client "
    "split stays split_seed's"
)

Log = Callable[[str], None]


def seeds_of(config: ExperimentConfig, repeats: int) -> list[int]:
    """``seed, seed+1, ..., seed+repeats-1`` (a ConfigError for ``repeats < 1``)."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"--repeats must be a whole number of runs >= 1, got {repeats!r}.")
    if config.seed + repeats - 1 > MAX_SEED:
        raise ConfigError(
            f"--repeats {repeats} from seed {config.seed} would reach seed "
            f"{config.seed + repeats - 1}, past the largest seed a config holds ({MAX_SEED}); "
            "start from a smaller --seed."
        )
    return [config.seed + i for i in range(repeats)]


def _saved_count(out: Path) -> int:
    """The number of seeds the repeats saved in ``out`` ran (0 if it does not say)."""
    data = tomllib.loads((out / REPEATS_FILE).read_text(encoding="utf-8"))
    n = data.get("repeats", {}).get("n") if isinstance(data.get("repeats"), dict) else None
    return n if isinstance(n, int) else 0


def seed_dir(out: Path, seed: int) -> Path:
    return out / f"seed={seed}"


def saved_config(out: Path, resume: bool) -> ExperimentConfig | None:
    """The configuration saved in ``out`` (on ``resume``), after checking that ``out`` is a
    folder of repeats to continue, or (without ``resume``) one to start."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output-dir {out} is a file, not a directory; choose another.")
    if (out / rd.CONFIG).is_file():
        raise ConfigError(
            f"--output-dir {out} is the run directory of a single run (it has {rd.CONFIG}); "
            + ("drop --repeats to resume it." if resume else "give the repeats their own folder.")
        )
    saved = out / REPEATS_FILE
    if not resume:
        if saved.is_file():
            raise FileExistsError(
                f"{out} already holds repeats; pass --resume to continue them or choose "
                "another --output-dir."
            )
        return None
    if not saved.is_file():
        raise FileNotFoundError(f"nothing to resume in {out}: it has no {REPEATS_FILE}.")
    try:
        data = tomllib.loads(saved.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(
            f"{saved} cannot be read: {e}; start the repeats again elsewhere."
        ) from None
    data.pop("repeats", None)
    return ExperimentConfig.from_dict(data, source=str(saved))


def run_repeats(
    config: ExperimentConfig,
    out: str | Path,
    repeats: int,
    *,
    resume: bool = False,
    progress: bool = False,
    log: Log = print,
) -> tuple[Path, dict[str, Any]]:
    """Run ``config`` with ``repeats`` seeds into ``out`` (see the module docstring);
    returns the path of ``repeats.md`` and the aggregate (``repeats.json``'s content)."""
    from fedp13n.experiments.p13n_experiment import run_experiment

    out = Path(out)
    seeds = seeds_of(config, repeats)
    saved = saved_config(out, resume)
    if saved is not None and saved.to_dict() != config.to_dict():
        raise ConfigError(
            f"--resume continues the repeats saved in {out / REPEATS_FILE}, but the settings "
            "given differ from them; resume with the same settings or use another --output-dir."
        )
    done = _saved_count(out) if saved is not None else 0
    if repeats < done:
        raise ConfigError(
            f"--repeats {repeats} is fewer than the {done} seeds of the repeats in {out}; the "
            f"table would leave the others out: resume with --repeats {done} (or more, to add "
            "seeds)."
        )
    out.mkdir(parents=True, exist_ok=True)
    with run_dir_lock(out):
        record = {**config.to_dict(), "repeats": {"n": repeats, "seeds": seeds}}
        atomic_write(out / REPEATS_FILE, tomli_w.dumps(record))
        log(f"repeats: {repeats} seeds ({', '.join(map(str, seeds))}) into {out}; {SEED_CHANGES}.")
        for i, seed in enumerate(seeds, 1):
            path = seed_dir(out, seed)
            if (path / rd.SUMMARY).is_file():
                log(f"  [{i}/{repeats}] seed {seed}: done before")
                continue
            again = (path / rd.CONFIG).is_file()
            log(f"  [{i}/{repeats}] seed {seed}: {'resuming' if again else 'running'} ...")
            run_experiment(
                config.replace(seed=seed), path, resume=again, progress=progress,
                log=lambda s: None,
            )  # fmt: skip
        note = f"{SEED_CHANGES.capitalize()} (split_seed = {config.split_seed})."
        return write_repeats(out, [seed_dir(out, s) for s in seeds], seeds, note)
