"""Training several folds at once: in this process (`parallel.backend: local`), on a Dask cluster
(`parallel.backend: dask`: one task per fold, a `GPU` resource per fold when workers advertise one), or
one GPU per Make job (`device_for_fold`).

Whatever the backend, a fold whose `weights.safetensors` exists with a matching fingerprint is skipped,
a failing fold is reported with its number while the others go on, and `run_folds` raises at the end
naming the failed folds. How to run it on several machines (shared storage, SLURM/PBS, DataLoader
workers inside Dask workers) is in docs/parallel.md.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable

from pipeline.config import Config, ConfigError, config_to_dict, load_config
from pipeline.fileio import OutputError, folder_lock
from pipeline.data.manifest import train_fingerprint

__all__ = ["run_folds", "train_fold", "check_fold_list", "device_for_fold", "parse_gpus", "pin_gpu", "fold_is_done", "FoldsFailedError"]

DONE, SKIPPED = "done", "skipped"
WORKER_WAIT_S = 600  # an external cluster's workers may still be queued batch jobs


class FoldsFailedError(RuntimeError):
    """Some folds failed; `.results` maps every fold to "done", "skipped" or its error."""

    def __init__(self, message: str, results: dict[int, str]):
        super().__init__(message)
        self.results = results


# ----------------------------------------------------------------------------------------
# GPU placement for `make -j4 train GPUS=0,1,2,3` (no torch import here: it must run first).

def parse_gpus(gpus) -> list | None:
    """`"0,1,2,3"`, `[0, 1]`, `3` or None/"" → a list of device ids (None when empty).

    Ids are integers, or GPU/MIG UUIDs (`GPU-...`, `MIG-...`) as `nvidia-smi -L` prints them.
    """
    if gpus is None or gpus == "" or gpus == []:
        return None
    if isinstance(gpus, int) and not isinstance(gpus, bool):
        return [gpus]
    items = gpus.split(",") if isinstance(gpus, str) else list(gpus)
    out: list = []
    for item in items:
        text = str(item).strip()
        if text.isdigit():
            out.append(int(text))
        elif text.startswith(("GPU-", "MIG-")):
            out.append(text)
        else:
            raise ConfigError(f"parallel.gpus: {item!r} is not a GPU index; expected e.g. 0,1,2,3")
    return out or None


def device_for_fold(fold: int, gpus: list | str | None) -> str | None:
    """The GPU id (as a string for `CUDA_VISIBLE_DEVICES`) for `fold`, round-robin; None without GPUs."""
    gpus = parse_gpus(gpus)
    if not gpus:
        return None
    return str(gpus[fold % len(gpus)])


def pin_gpu(fold: int, gpus, environ: dict | None = None) -> str | None:
    """Set `CUDA_VISIBLE_DEVICES` for `fold` (round-robin over `gpus`); returns the id set, or None.

    Call it before anything touches CUDA: a process that has initialised CUDA keeps the
    devices it saw. Inside the process the chosen GPU is then `cuda:0`.
    """
    device = device_for_fold(fold, gpus)
    if device is None:
        return None
    if environ is None:
        import sys
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            raise RuntimeError("pin_gpu was called after CUDA was initialised in this process; "
                               "set CUDA_VISIBLE_DEVICES before any CUDA call")
        environ = os.environ
    environ["CUDA_VISIBLE_DEVICES"] = device
    return device


# ----------------------------------------------------------------------------------------
# Which folds are done.

def _sidecar_fingerprint(cfg: Config, fold: int) -> str | None:
    weights = cfg.fold_dir(fold) / "weights.safetensors"
    sidecar = weights.with_suffix(".json")
    if not weights.is_file() or not sidecar.is_file():
        return None
    try:
        return json.loads(sidecar.read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def fold_is_done(cfg: Config, fold: int, fingerprints: set[str] | None = None) -> bool:
    """True when the fold's weights exist, were trained with this config's training keys on these
    training images (`manifest.train_fingerprint`), and are newer than the folds file (the rule
    Make applies to the folds file, so both agree on what is stale)."""
    found = _sidecar_fingerprint(cfg, fold)
    wanted = fingerprints if fingerprints is not None else {train_fingerprint(cfg)}
    if found is None or found not in wanted:
        return False
    folds_file = Path(cfg.folds_file)
    weights = cfg.fold_dir(fold) / "weights.safetensors"
    return not folds_file.is_file() or weights.stat().st_mtime >= folds_file.stat().st_mtime


def check_fold_list(cfg: Config, folds) -> list[int]:
    """`folds` as integers, each an existing fold, none twice, with the folds file present (ValueError,
    FileNotFoundError otherwise): what `run_folds` and `make tune`'s `tune.folds` accept."""
    folds = [int(k) for k in folds]
    bad = [k for k in folds if not 0 <= k < cfg.folds.n_splits]
    if bad:
        raise ValueError(f"fold(s) {bad} do not exist: folds.n_splits is {cfg.folds.n_splits} "
                         f"(folds 0..{cfg.folds.n_splits - 1})")
    if len(set(folds)) != len(folds):
        raise ValueError(f"fold list {folds} names a fold twice")
    if not Path(cfg.folds_file).is_file():
        raise FileNotFoundError(f"{cfg.folds_file} not found: run `make folds` (or `python -m pipeline folds`) first")
    return folds


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


# ----------------------------------------------------------------------------------------
# The task that runs on a Dask worker.

def _train_fold_task(cfg_dict: dict, fold: int, cwd: str, force: bool = False) -> dict:
    """Train one fold on a Dask worker from a plain-dict config (workers get no Config objects)."""
    import socket

    host = socket.gethostname()

    def remote_print(msg: str) -> None:
        # Sent to the client, which prints it (distributed.print would also print it here,
        # doubling every line on a LocalCluster, whose workers share the client's terminal).
        from distributed import get_worker

        try:
            get_worker().log_event("print", {"args": (str(msg),), "sep": " ", "end": "\n", "flush": True})
        except ValueError:  # not on a worker
            print(msg, flush=True)

    if os.getcwd() != cwd:
        # The config's relative paths mean the client's working directory (see the module docstring).
        if not Path(cwd).is_dir():
            raise FileNotFoundError(f"worker {host} has no directory {cwd} (the client's working directory): "
                                    "the project, data and output_dir must be on a shared path")
        os.chdir(cwd)
    from pipeline.device import loader_workers, resolve_device

    workers = loader_workers(cfg_dict["train"]["num_workers"], resolve_device(cfg_dict["train"]["device"]))
    if workers > 0 and multiprocessing.current_process().daemon:
        # Safety net: DataLoader workers cannot start in a daemonic process ("daemonic processes
        # are not allowed to have children"); run_folds normally decides this before submitting.
        remote_print(f"[fold {fold}] daemonic Dask worker on {host}: training with train.num_workers=0")
        cfg_dict = {**cfg_dict, "train": {**cfg_dict["train"], "num_workers": 0}}
    elif workers > 0:
        _fast_loader_processes()
    cfg = load_config(None, cfg_dict)

    status = train_fold(cfg, fold, force, log=lambda msg: remote_print(f"[{host}] {msg}"))
    return {"host": host, "status": status, "fingerprint": train_fingerprint(cfg)}


def _fast_loader_processes() -> None:
    """Start DataLoader workers from a fork server instead of `spawn` inside Dask workers.

    Dask worker processes run with the `spawn` start method, so every DataLoader worker
    would be a fresh interpreter re-importing torch and the client's `__main__` (pytest,
    a script): seconds to minutes per loader, every epoch. A fork server that has
    imported torch and the pipeline once forks each loader worker in milliseconds, and,
    unlike a plain `fork` of this multi-threaded worker, from a clean single-threaded process.
    """
    if multiprocessing.get_start_method(allow_none=True) == "forkserver":
        return
    if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover - Windows
        return
    multiprocessing.set_forkserver_preload(["torch", "pipeline.train.loop"])
    multiprocessing.set_start_method("forkserver", force=True)


def _worker_facts() -> dict:
    return {"daemon": multiprocessing.current_process().daemon}


def _pin_worker_gpu(gpus: list, dask_worker=None) -> str | None:
    """Run once per LocalCluster worker (named 0..n-1) before any task: one GPU per worker."""
    index = int(dask_worker.name) if dask_worker is not None else 0
    return pin_gpu(index, gpus)


# ----------------------------------------------------------------------------------------

def train_fold(cfg: Config, fold: int, force: bool = False, log: Callable[[str], Any] = print,
               fingerprint: str | None = None) -> str:
    """Train one fold while holding its folder's lock; returns "done", or "skipped" when already done.

    A second run of the same fold (another terminal, a rerun of `make -j`, a Dask retry) waits for
    the first, then finds the fold done and skips it: two processes never write one fold's files.
    With `force` (`make retrain`) the fold's resumable state is dropped and it trains afresh, after
    any run in progress has finished.
    """
    from pipeline.train.loop import fit

    with folder_lock(cfg.fold_dir(fold), f"fold {fold} of {cfg.exp_dir}", log):
        if not force and fold_is_done(cfg, fold, {fingerprint or train_fingerprint(cfg)}):
            log(f"[parallel] fold {fold}: already trained with this config and these images, skipped")
            return SKIPPED
        if force:
            shutil.rmtree(cfg.fold_dir(fold) / "state", ignore_errors=True)
        fit(cfg, fold, log=log)
        return DONE


def _skip_done(cfg: Config, folds: list[int], fingerprint: str, force: bool, results: dict, log) -> list[int]:
    """Mark folds already trained with `fingerprint` as skipped (unless `force`); return the others."""
    for k in folds:
        if not force and fold_is_done(cfg, k, {fingerprint}):
            results[k] = SKIPPED
            log(f"[parallel] fold {k}: already trained with this config, skipped")
    return [k for k in folds if k not in results]


def run_folds(cfg: Config, folds: list[int], backend: str | None = None, scheduler=None,
              log: Callable[[str], Any] = print, force: bool = False) -> dict[int, str]:
    """Train `folds`; returns {fold: "done" | "skipped" | "<error>"} and raises if any failed.

    A fold is skipped when `fold_is_done` (weights with this config's training fingerprint,
    newer than the folds file), unless `force` (`make retrain`): then it is trained again.

    backend: "local" (sequential, in this process) or "dask"; default `cfg.parallel.backend`.
    scheduler (dask only): a scheduler address, a `distributed.Client`, a cluster object, or
    None for `cfg.parallel.scheduler` (None there too: a `LocalCluster` on this machine).
    Outputs go to `cfg.output_dir`, which must be shared by all workers (module docstring).
    """
    backend = backend or cfg.parallel.backend
    if backend not in ("local", "dask"):
        raise ConfigError(f"parallel.backend: '{backend}' is not one of: local, dask")
    folds = check_fold_list(cfg, folds)
    results: dict[int, str] = {}
    pending = _skip_done(cfg, folds, train_fingerprint(cfg), force, results, log)
    if pending:
        if backend == "local":
            _run_local(cfg, pending, results, log, force)
        else:
            scheduler = scheduler if scheduler is not None else cfg.parallel.scheduler
            _run_dask(cfg, pending, results, scheduler, log, force)
    results = {k: results[k] for k in folds}
    failed = {k: v for k, v in results.items() if v not in (DONE, SKIPPED)}
    if failed and len(folds) == 1:
        raise FoldsFailedError(f"fold {folds[0]}: {failed[folds[0]]}", results)
    if failed:
        lines = "\n".join(f"  fold {k}: {v}" for k, v in failed.items())
        first = next(iter(failed))
        raise FoldsFailedError(
            f"{len(failed)} of {len(folds)} fold(s) failed: {sorted(failed)}\n{lines}\n"
            f"The other folds are saved. Retry one fold with `make train FOLD={first}` or "
            f"`python -m pipeline train --config <config> --fold {first}` "
            f"(or rerun the same command: finished folds are skipped, killed ones resume).",
            results)
    return results


def _run_local(cfg: Config, folds: list[int], results: dict, log, force: bool = False) -> None:
    for k in folds:
        try:
            results[k] = train_fold(cfg, k, force, log)
        except Exception as exc:  # one broken fold must not stop the others
            results[k] = _error_text(exc)
            # A problem the message explains (data, config, disk) needs no traceback; a bug does.
            trace = "" if isinstance(exc, (ValueError, OutputError)) else f"\n{traceback.format_exc()}"
            log(f"[parallel] fold {k} FAILED: {results[k]}{trace}")


def _gpu_slots(client) -> dict[str, float]:
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return {addr: w.get("resources", {}).get("GPU", 0) for addr, w in workers.items()}


def _run_dask(cfg: Config, folds: list[int], results: dict, scheduler, log, force: bool = False) -> None:
    owned: list = []   # the client and cluster started here, closed at the end
    try:
        client, gpus = _dask_client(cfg, folds, scheduler, owned, log)
        use_gpu = _check_workers(client, gpus, log)
        cfg_dict = config_to_dict(cfg)
        if _loader_workers_impossible(cfg, client, use_gpu):
            log("[parallel] the Dask workers are daemonic processes, which cannot start DataLoader workers: "
                "training with train.num_workers=0 (start workers with DASK_DISTRIBUTED__WORKER__DAEMON=False "
                "to keep them)")
            cfg_dict["train"]["num_workers"] = 0
            fingerprint = train_fingerprint(load_config(None, cfg_dict))
            folds = _skip_done(cfg, folds, fingerprint, force, results, log)
        if folds:
            _submit_and_collect(cfg, cfg_dict, folds, client, use_gpu, force, results, log)
    finally:
        for thing in reversed(owned):
            thing.close()


def _dask_client(cfg: Config, folds: list[int], scheduler, owned: list, log):
    """The client to submit to (given, started on a new local cluster, or connected to an address)."""
    from distributed import Client

    gpus = parse_gpus(cfg.parallel.gpus)
    if isinstance(scheduler, Client):
        return scheduler, gpus
    if scheduler is not None:
        address = getattr(scheduler, "scheduler_address", scheduler)
        owned.append(Client(address))
        log(f"[parallel] connected to the Dask scheduler at {address}")
        return owned[-1], gpus
    import dask
    from distributed import LocalCluster

    if gpus is None and cfg.train.device != "cpu":
        gpus = _visible_gpus()
    n = len(gpus) if gpus else max(1, min(len(folds), os.cpu_count() or 1))
    threads = max(1, (os.cpu_count() or 1) // n)  # torch intra-op threads per worker
    # Non-daemonic worker processes may start DataLoader workers (docs/parallel.md).
    with dask.config.set({"distributed.worker.daemon": False}):
        owned.append(LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
            resources={"GPU": 1} if gpus else None,
            env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}))
    owned.append(Client(owned[-1]))
    client = owned[-1]
    if gpus:
        client.run(_pin_worker_gpu, gpus)
    log(f"[parallel] started a local Dask cluster: {n} worker(s)"
        + (f", GPUs {gpus}" if gpus else f", {threads} thread(s) each"))
    return client, gpus


def _check_workers(client, gpus, log) -> bool:
    """Wait for a worker if none has joined; whether folds get one GPU each (workers advertise GPU)."""
    if not client.scheduler_info(n_workers=-1)["workers"]:
        log(f"[parallel] waiting up to {WORKER_WAIT_S} s for a Dask worker to join (queued batch jobs?)")
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except TimeoutError:
            raise RuntimeError(f"no Dask worker joined the scheduler within {WORKER_WAIT_S} s: start some "
                               "(`dask worker <scheduler> --nworkers 1 --resources GPU=1`)") from None
    use_gpu = any(v >= 1 for v in _gpu_slots(client).values())
    if gpus and not use_gpu:
        raise ConfigError("parallel.gpus is set but no worker of the Dask cluster advertises a GPU "
                          "resource, so GPU tasks would wait forever: start the workers with "
                          "`--resources GPU=1` (one worker per GPU)")
    return use_gpu


def _loader_workers_impossible(cfg: Config, client, use_gpu: bool) -> bool:
    """The config wants DataLoader workers but the Dask workers are daemonic (they cannot have children)."""
    # 'auto' starts loader workers only beside a GPU (pipeline.device.loader_workers).
    wants_workers = use_gpu if cfg.train.num_workers == "auto" else cfg.train.num_workers > 0
    return wants_workers and any(f["daemon"] for f in client.run(_worker_facts).values())


def _submit_and_collect(cfg: Config, cfg_dict: dict, folds: list[int], client, use_gpu: bool, force: bool,
                        results: dict, log) -> None:
    """One task per fold; each result checked against the files this machine sees."""
    from distributed import as_completed

    run_id, cwd = uuid.uuid4().hex[:8], os.getcwd()
    futures = {client.submit(_train_fold_task, cfg_dict, k, cwd, force, key=f"train-fold-{k}-{run_id}",
                             pure=False, resources={"GPU": 1} if use_gpu else None): k for k in folds}
    log(f"[parallel] submitted folds {folds} to {len(_gpu_slots(client))} worker(s)"
        + (" (one GPU each)" if use_gpu else ""))
    for future in as_completed(list(futures)):
        k = futures[future]
        if future.status == "finished":
            info = future.result()
            if _sidecar_fingerprint(cfg, k) == info["fingerprint"]:  # the worker's files are visible here
                results[k] = info["status"]
                log(f"[parallel] fold {k} {info['status']} on {info['host']}")
            else:
                results[k] = (f"trained on {info['host']}, but {cfg.fold_dir(k)} is not visible here: "
                              "output_dir must be a shared path that every worker and this machine see")
                log(f"[parallel] fold {k} FAILED: {results[k]}")
        else:
            try:
                exc, tb = future.exception(), future.traceback()
            except Exception as lost:  # cancelled, or the scheduler forgot it
                exc, tb = lost, None
            results[k] = _error_text(exc)
            log(f"[parallel] fold {k} FAILED: {results[k]}\n{''.join(traceback.format_tb(tb)) if tb else ''}")


def _visible_gpus() -> list | None:
    """The GPUs this process may use: `CUDA_VISIBLE_DEVICES` when set (workers are pinned to those
    physical ids, not to 0..n-1), else every device torch counts."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return parse_gpus(visible.strip()) if visible.strip() not in ("", "-1") else None
    import torch

    count = torch.cuda.device_count()
    return list(range(count)) if count else None
