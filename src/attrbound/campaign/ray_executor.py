"""Running a campaign's units on Ray (the optional extra ``attrbound[ray]``, Ray >= 2.9).

:class:`RayExecutor` implements :class:`~attrbound.campaign.executor.Executor`:

- **Where.** Without an address it starts a local Ray instance on this machine (``num_cpus``
  = ``workers``, no dashboard, bound to 127.0.0.1) and stops it when the run ends; with
  ``address`` (or the ``RAY_ADDRESS`` variable) it joins that cluster and only disconnects.
  A Ray session already initialised in this process (``ray.init`` by the caller) is used as
  it is and left running.
- **What travels.** Once per run, a :class:`WorkSpec`: the grid (model path, data source,
  settings), the driver's ``config_id`` (which holds the SHA-256 of the model file and of
  the data file), a SHA-256 of the loaded inputs and of the model's parameters, and the
  bound / attack functions. Per task, one :class:`~attrbound.campaign.unit.Unit` (index
  range, configuration, seed). Each worker process loads the model and the inputs itself
  with :func:`~attrbound.campaign.runner.prepare`, keeps them for the next tasks, and
  refuses (:class:`AttrboundError`, not retried) when any digest differs from the driver's:
  every worker must see the same files. A model or inputs passed to ``run_campaign`` as
  objects are therefore not shipped: they must equal what the grid's files load.
- **Threads.** Each task sets ``torch.set_num_threads(threads_per_worker)``; default
  max(1, cores // workers), cores being this machine's (local) or the cluster's CPUs.
- **Failures.** A task whose worker dies (crash, kill, out of memory, lost node) is
  resubmitted up to ``retries`` times (default 2), then yielded as
  :func:`~attrbound.campaign.executor.failed_result`. An exception raised by the unit's own
  code is not a worker failure: it is raised on the driver as itself.
- **One writer.** Results stream back as they complete (``ray.wait``); the driver's runner
  alone writes the rows and the x_adv sidecar. At most ``2 * workers`` tasks are in flight,
  so that results do not pile up in the object store.

Rows equal the serial executor's on the same grid: a unit's result depends only on its value
and the context (seeded draws), not on the process that evaluates it, given the same torch
version, device and number of threads.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attrbound.campaign.executor import failed_result
from attrbound.campaign.grid import Grid
from attrbound.campaign.runner import prepare
from attrbound.campaign.unit import Unit, UnitContext, UnitResult, evaluate_unit
from attrbound.errors import AttrboundError
from attrbound.results import AttackFunction, BoundFunction

#: resubmissions of a unit whose worker died, before it is reported as failed
DEFAULT_RETRIES = 2


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise AttrboundError("the ray executor needs Ray: pip install 'attrbound[ray]'.") \
            from None
    return ray


def tensors_sha256(*tensors: Tensor) -> str:
    """SHA-256 over the dtype, shape and bytes of each tensor (on the CPU), in order."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def module_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and bytes, in order)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode() + b"\0")
        h.update(tensors_sha256(t).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class WorkSpec:
    """What every task of one run shares (picklable; shipped once with ``ray.put``)."""

    grid: Grid
    config_id: str
    model_sha256: str
    inputs_sha256: str
    params_sha256: str
    bound_fn: BoundFunction | None
    attack_fn: AttackFunction | None
    raise_errors: bool

    @classmethod
    def of(cls, context: UnitContext) -> WorkSpec:
        return cls(grid=context.grid, config_id=context.config["config_id"],
                   model_sha256=context.config["model_sha256"],
                   inputs_sha256=tensors_sha256(context.images, context.labels),
                   params_sha256=module_sha256(context.model), bound_fn=context.bound_fn,
                   attack_fn=context.attack_fn, raise_errors=context.raise_errors)

    @property
    def key(self) -> str:
        return f"{self.config_id}:{self.inputs_sha256}:{self.params_sha256}"


#: per worker process: the context of the last spec seen (a worker serves one run at a time)
_CACHE: dict[str, UnitContext] = {}


def worker_context(spec: WorkSpec) -> UnitContext:
    """The spec's context, loaded in this process (once) and checked against the driver's
    digests; raises AttrboundError naming the file that differs."""
    ctx = _CACHE.get(spec.key)
    if ctx is not None:
        return ctx
    grid = spec.grid
    ctx = prepare(grid, bound_fn=spec.bound_fn, attack_fn=spec.attack_fn,
                  raise_errors=spec.raise_errors)
    host = os.uname().nodename
    if ctx.config["model_sha256"] != spec.model_sha256:
        raise AttrboundError(
            f"worker on {host}: the model file {grid.weights or grid.model} has SHA-256 "
            f"{ctx.config['model_sha256'][:16]}..., the driver's {spec.model_sha256[:16]}...; "
            "every worker must see the same model file.")
    if ctx.config["config_id"] != spec.config_id:
        raise AttrboundError(
            f"worker on {host}: the data {grid.data or grid.dataset} differs from the "
            "driver's (configuration digests differ); every worker must see the same files.")
    if tensors_sha256(ctx.images, ctx.labels) != spec.inputs_sha256:
        raise AttrboundError(
            f"worker on {host}: the inputs loaded from the grid's data source differ from the "
            "driver's; the ray executor loads the inputs on each worker, so pass them as a "
            "file (--data) rather than as tensors.")
    if module_sha256(ctx.model) != spec.params_sha256:
        raise AttrboundError(
            f"worker on {host}: the model loaded from {grid.model} has other parameters than "
            "the driver's; the ray executor loads the model on each worker, so pass it as a "
            "file rather than as a module.")
    _CACHE.clear()
    _CACHE[spec.key] = ctx
    return ctx


def evaluate_task(spec: WorkSpec, unit: Unit, threads: int) -> UnitResult:
    """The body of one Ray task: the unit's result, tensors on the CPU."""
    torch.set_num_threads(threads)
    result = evaluate_unit(unit, worker_context(spec))
    if result.x_best is not None:
        result.x_best = result.x_best.detach().cpu()
    return result


class RayExecutor:
    """Evaluates units as Ray tasks (see the module docstring).

    ``workers``: concurrent tasks (default: the local CPU count, or the cluster's CPUs when
    joining one); ``address``: a cluster to join (default ``RAY_ADDRESS``, else a local
    instance); ``gpus_per_worker``: GPUs each task reserves (fractions share a GPU; set
    the grid's device to ``cuda`` with it); ``threads_per_worker``: torch threads per task
    (default max(1, cores // workers)); ``retries``: resubmissions of a unit whose worker
    died (default 2).
    """

    def __init__(self, workers: int | None = None, *, address: str | None = None,
                 gpus_per_worker: float = 0.0, threads_per_worker: int | None = None,
                 retries: int = DEFAULT_RETRIES) -> None:
        for name, value in (("workers", workers), ("threads_per_worker", threads_per_worker)):
            if value is not None and int(value) < 1:
                raise AttrboundError(f"{name} must be >= 1, got {value}.")
        if gpus_per_worker < 0 or retries < 0:
            raise AttrboundError("gpus_per_worker and retries must be >= 0.")
        self.workers = workers
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.gpus_per_worker = float(gpus_per_worker)
        self.threads_per_worker = threads_per_worker
        self.retries = int(retries)
        self.failed: list[Unit] = []

    def _connect(self, ray: Any) -> bool:
        """Initialise Ray unless it already is; True when this call started it."""
        if ray.is_initialized():
            return False
        if self.address:
            ray.init(address=self.address, log_to_driver=False)
        else:
            ray.init(address="local", num_cpus=self.workers or os.cpu_count() or 1,
                     num_gpus=None if self.gpus_per_worker else 0,
                     include_dashboard=False, _node_ip_address="127.0.0.1",
                     log_to_driver=False)
        return True

    def _sizes(self, ray: Any) -> tuple[int, int]:
        """(workers, threads per worker) for the connected Ray session."""
        cores = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        if not self.address and not self.workers:
            cores = os.cpu_count() or cores
        workers = int(self.workers or cores)
        return workers, int(self.threads_per_worker or max(1, cores // workers))

    def run(self, units: Sequence[Unit], context: UnitContext) -> Iterator[UnitResult]:
        ray = _ray()
        started = self._connect(ray)
        pending: dict[Any, tuple[Unit, int]] = {}
        try:
            workers, threads = self._sizes(ray)
            spec = ray.put(WorkSpec.of(context))
            task = ray.remote(num_cpus=1, num_gpus=self.gpus_per_worker,
                              max_retries=0)(evaluate_task)
            queue = deque((u, 0) for u in units)
            while queue or pending:
                while queue and len(pending) < 2 * workers:
                    unit, attempt = queue.popleft()
                    pending[task.remote(spec, unit, threads)] = (unit, attempt)
                # a timeout, so that Ctrl-C (KeyboardInterrupt) reaches this loop
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    unit, attempt = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:  # the unit's own exception
                        cause = getattr(exc, "cause", None)
                        if isinstance(cause, BaseException):
                            raise cause from None
                        raise exc.as_instanceof_cause() from None
                    except ray.exceptions.RayError as exc:  # the worker died
                        if attempt < self.retries:
                            queue.appendleft((unit, attempt + 1))
                            continue
                        self.failed.append(unit)
                        result = failed_result(
                            unit, context, f"worker died {attempt + 1} times "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
                    yield result
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()
