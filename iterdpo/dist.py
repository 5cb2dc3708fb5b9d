"""Several processes (``torchrun``, ``accelerate launch``): who computes what, and who writes.

With WORLD_SIZE 1 (a notebook, ``python -m iterdpo run``) no process group is started and every function
here is the identity: one process computes and writes everything.

With N processes every process runs the same stage code, and:

- training: TRL's and transformers' trainers find the process group (started by accelerate's
  ``PartialState``: gloo on a CPU, NCCL on GPUs) and train data-parallel; ``split_batch`` sets the
  per-device batch so that the effective batch stays the configured one;
- sampling, log-probs and scoring: the batches are formed from the whole list, exactly as one process
  forms them (length-sorted, each sampling batch seeded with ``seed + b``), and dealt round-robin
  (``mine``: batch b to process b mod N); ``gather`` / ``sum_parts`` put the results together in the
  original order on every process. Every record is computed by the same batch with the same seed as in
  one process, so the records are identical whatever N is;
- writes: only the main process writes a stage folder (``stage_folder``, still atomic); the others
  compute into a throwaway folder and wait at a barrier, then read the finished folder. ``on_main`` runs
  a single write (the controller's decision, the summary) once;
- the end: ``shutdown`` leaves the group at a barrier, and ``run_process`` ends each process without the
  interpreter's finalization, which gloo's worker threads can abort.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, NoReturn

from .folder import is_done
from .folder import stage_folder as atomic
from .runfolder import StageFiles


def world_size() -> int:
    """Processes in this launch (torchrun and accelerate launch set WORLD_SIZE; 1 without them)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    return world_size() > 1


def _state():
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())  # accelerate needs cpu=True to pick gloo on a CPU


def init():
    """Start the process group through accelerate (gloo on a CPU, NCCL on GPUs), each process on its own
    GPU, or with one torch thread on a CPU (N processes share its cores). None in one process."""
    if not active():
        return None
    import torch

    if not torch.cuda.is_available():  # what `accelerate launch --cpu` sets: the trainers' own state picks gloo too
        os.environ["ACCELERATE_USE_CPU"] = "true"
    state = _state()
    if state.device.type == "cpu":
        torch.set_num_threads(1)
    elif state.device.type == "cuda":
        torch.cuda.set_device(state.device)  # so that "cuda" is this process's GPU when models are loaded
    return state


def shutdown() -> None:
    """Leave the process group cleanly: every process meets at a barrier, then the group is destroyed. Gloo's
    worker threads can outlive it: end the process with `run_process`."""
    import torch.distributed as td

    if active() and td.is_available() and td.is_initialized():
        td.barrier()
        td.destroy_process_group()


def run_process(main: Callable[[], int | None]) -> NoReturn:
    """Run `main` and end the process with its exit status, as ``sys.exit(main())`` does.

    With several processes the process then ends with ``os._exit``, after the atexit handlers have run and
    logging, stdout and stderr are flushed: the interpreter's finalization is skipped. Finalization can
    abort a process whose work is done. A gloo worker thread can outlive ``shutdown`` and still be freeing
    the last collectives' tensors; freeing a tensor that Python created needs the GIL, a finalizing
    interpreter ends any thread that asks for it, and ending a thread inside a C++ destructor aborts the
    process ("terminate called without an active exception"). The core of such an abort: ProcessGroupGloo::
    runLoop → ~AsyncBarrierWork → ~AsyncAllgatherWork → TensorImpl::decref_pyobject → take_gil →
    pthread_exit. Not waited for, as they would be at a normal exit: non-daemon threads (this package
    starts none). Files this package writes are closed, and stage folders renamed into place, before
    `main` returns."""
    if not active():
        sys.exit(main())
    try:
        sys.exit(main())
    except SystemExit as e:
        code = _status(e.code)
    except BaseException as e:
        sys.excepthook(*sys.exc_info())
        code = 130 if isinstance(e, KeyboardInterrupt) else 1  # 130: what a shell reports for Ctrl-C
    atexit._run_exitfuncs()  # what finalization runs first (e.g. a tracker's finish), while all is still alive
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # closed or replaced by something without a flush
            pass
    os._exit(code)


def _status(code) -> int:
    """The exit status ``sys.exit(code)`` gives: None is 0, an int itself, anything else printed, then 1."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


def rank() -> int:
    return _state().process_index if active() else 0


def is_main() -> bool:
    return not active() or _state().is_main_process


def barrier() -> None:
    if active():
        _state().wait_for_everyone()


def broadcast(value):
    """The main process's `value`, on every process (pickled)."""
    if not active():
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def mine(batches: list) -> list:
    """The batches this process computes: every N-th, from its rank (all of them in one process)."""
    return batches[rank()::world_size()] if active() else batches


def gather(part: dict) -> dict:
    """Every process's {index: result} merged, on every process (each index is computed by one process)."""
    if not active():
        return part
    from accelerate.utils import gather_object

    merged: dict = {}
    for p in gather_object([part]):
        merged.update(p)
    return merged


def sum_parts(t):
    """A tensor each process filled at its own rows (zeros elsewhere), whole on every process: the sum over
    processes, which is exact (x + 0 = x)."""
    if not active():
        return t
    import torch.distributed as td

    x = t.to(_state().device)
    td.all_reduce(x)
    return x.to(t.device)


def on_main(fn: Callable, *args, **kwargs):
    """fn(*args, **kwargs) on the main process only, then a barrier, so the others read what it wrote.
    Returns fn's result on the main process, None on the others."""
    out = fn(*args, **kwargs) if is_main() else None
    barrier()
    return out


def split_batch(batch: int, accum: int) -> tuple[int, int]:
    """(per-device batch, accumulation steps) that keep ``batch x accum`` examples per optimizer step over N
    processes. The rule: batch divisible by N: batch/N per device, accumulation kept; else accumulation
    divisible by N: the batch per device, accumulation/N; else ceil(batch/N) per device, accumulation kept,
    and the effective batch grows to ceil(batch/N) x N x accum (said once)."""
    n = world_size()
    if n == 1 or batch % n == 0:
        return batch // n, accum
    if accum % n == 0:
        return batch, accum // n
    per = -(-batch // n)
    if is_main():
        print(f"note: batch {batch} x accumulation {accum} does not split over {n} processes; "
              f"{per} per device, effective batch {per * n * accum}")
    return per, accum


@contextmanager
def stage_folder(path: str | Path, config: dict, force: bool = False) -> Iterator[Path | None]:
    """folder.stage_folder for one or several processes: yields where to write the stage, or None when it is done.

    Several processes: whether the stage is done is the main process's answer, sent to all. The main process
    writes the atomic folder; the others run the stage too (training and sampling need every process) into
    a throwaway folder. All meet at a barrier when the stage is written, so the others then read it. On an
    error there is no barrier: the launcher stops the other processes.
    """
    if not active():
        with atomic(path, config, force) as tmp:
            yield tmp
        return
    if not broadcast(force or not is_done(path)):
        yield None
    elif is_main():
        with atomic(path, config, force=True) as tmp:
            yield tmp
    else:
        with tempfile.TemporaryDirectory(prefix=f"iterdpo-rank{rank()}-{Path(path).name}-") as scratch:
            yield Path(scratch)
    barrier()


def shared_dataset(rows: list[dict], folder: Path):
    """datasets.Dataset of `rows`. Several processes: saved by the main process under its `folder` and loaded
    from there by every process, so the cache files the trainers write beside a dataset are shared (TRL's
    DPOTrainer caches the reference log-probs that way; an in-memory dataset would keep them in a
    per-process temporary folder, which the other processes cannot read)."""
    from datasets import Dataset, load_from_disk

    ds = Dataset.from_list(rows)
    if not active():
        return ds
    where = StageFiles(broadcast(str(folder))).dataset
    if is_main():
        ds.save_to_disk(str(where))
    barrier()
    return load_from_disk(str(where))
