"""The validation campaign (DESIGN.md section 6): bounds and attacks over a grid, one row each.

For a model, a dataset split and a grid of settings, the campaign computes for every input x
(``n`` inputs from index ``start``) and every configuration c = (attribution, norm, eps):

- every bound method m (``taylor``, ``region``, ``interval``): U_m(x) >= max ||A(x') - A(x)||_2
  and the cosine lower bound C_m(x) <= min cos(A(x), A(x')) over the perturbation set;
- every attack (``pgd``, ``ifia_topk``, ``ifia_center``, ``random``): a point x' of the set and
  its euclidean deviation, cosine similarity, top-k intersection, Kendall and Spearman;
- the best attack per metric (the largest euclidean deviation; the smallest cosine, top-k
  intersection, Kendall and Spearman), over the attacks that kept the label;
- the VIOLATION flags per bound method m:

      euclidean:  L(x) > U_m(x) (1 + 1e-6) + 1e-9      (L = best attack's euclidean deviation)
      cosine:     l(x) < C_m(x) - 1e-6                 (l = best attack's cosine similarity)

  A violation means the bound was not an upper bound for that input: a practical bound
  (``taylor``, ``region``) missed the worst case, or a certified one is wrong.

The points every attack visited (``AttackResult.points``, plus its best point ``x_adv``) are
handed to the region bound (``bound(..., method="region", points=...)``), so the region bound
is never evaluated without the attacks' knowledge of the ball.

Rows
----
One JSON object per line, per (input, attribution, norm, eps); see :func:`make_row` for the
fields. Timings are all under the key ``seconds`` (so that two runs compare equal without it).

Resumable
---------
Work is split into UNITS: a unit is one batch of inputs (``batch_size`` consecutive indices,
batches aligned on ``start``) under one configuration. A unit's rows are appended in one
write, flushed and fsync'ed. Rerunning the same command on the same ``out`` file

1. reads the file; a last line that is truncated or unreadable (a crash mid-write, even
   kill -9 or a power cut) is cut off the file; an unreadable line before the last one is
   corruption and is refused;
2. refuses, with one clear sentence, a file whose rows were written by a different
   configuration (model weights, grid, budgets, seeds, package version: every field of
   :meth:`Grid.identity`); pass a new ``out`` or ``overwrite=True``;
3. skips the keys (index, attribution, norm, eps) already present, and runs the units with
   missing keys in full (random draws depend on the whole batch, so a unit is always rerun
   with the same inputs and seed), appending only the missing rows.

Every unit is deterministic for a given device, so an interrupted and resumed run yields the
same set of rows as an uninterrupted one (except ``seconds``). An exclusive lock on the file
(POSIX ``flock``) refuses a second process writing the same ``out`` at the same time.

Gallery sidecar
---------------
For the report's gallery, the point x_adv of the best euclidean attack is stored per row in
``<out>.adv/<unit>.safetensors`` (tensors ``x_adv`` [b, *S] float32 and ``index`` [b]),
written atomically before the unit's rows; a row's ``adv`` field names its file and position.
Inputs themselves are re-read from the dataset named in the row's ``config``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attrbound._validate import require_smooth_or_surrogate
from attrbound.errors import AttrboundError, check_choice

BOUND_METHODS = ("taylor", "region", "interval")
ATTACK_METHODS = ("pgd", "ifia_topk", "ifia_center", "random")
#: metric -> "max" (larger is a stronger attack) or "min" (smaller is stronger)
ATTACK_METRICS = {
    "euclidean": "max",
    "cosine": "min",
    "topk_intersection": "min",
    "kendall": "min",
    "spearman": "min",
}
#: violation tolerances: euclidean L > U (1 + RTOL) + ATOL; cosine l < C - COSINE_ATOL
EUCLIDEAN_RTOL = 1e-6
EUCLIDEAN_ATOL = 1e-9
COSINE_ATOL = 1e-6
#: the key identifying a row
KEY_FIELDS = ("index", "attribution", "norm", "eps")

Key = tuple[int, str, str, float]


class ConfigMismatch(AttrboundError):
    """The rows file holds rows of another configuration (see :func:`run_campaign`)."""


# ----------------------------------------------------------------------------------------
# The grid
# ----------------------------------------------------------------------------------------


def _check_tables(
    name: str, value: Any, known: Sequence[str], what: str, example: str
) -> None:
    """``value`` must map names from ``known`` to tables (dicts) of keyword arguments."""
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise AttrboundError(
            f"{name} must map one of the {what} to a table of keyword arguments, e.g. "
            f"{example}."
        )
    unknown = set(value) - set(known)
    if unknown:
        raise AttrboundError(f"{name} names unknown {what}: {sorted(unknown)}.")


@dataclass
class Grid:
    """What to evaluate: model, inputs, settings and budgets of one campaign.

    Inputs: ``n`` inputs of ``split`` from index ``start`` of ``dataset`` (default: the one in
    the checkpoint), bundled subset or the full files under ``root``.
    Grid: ``attributions`` x ``norms`` x ``eps``; ``attribution_options`` maps a method name to
    its options (e.g. ``{"integrated_gradients": {"steps": 16}}``).
    Methods: ``bounds`` (subset of taylor, region, interval), ``attacks`` (subset of pgd,
    ifia_topk, ifia_center, random); at least one of either.
    Budgets (None = the library default): attack ``steps`` (20), ``restarts`` (1), random
    ``samples`` (200), top-k ``k`` (100 on 28x28), pgd/random ``objective`` (euclidean);
    ``bound_options``: per bound method, extra keyword arguments of
    :func:`attrbound.bounds.bound` (e.g. ``{"region": {"ascent_steps": 5}}``).
    ``surrogate_beta``: softplus surrogate for ReLU / max-pool models (bounds and attacks).
    ``seed``: a unit whose first input has index i uses seed + i. ``batch_size``: inputs per
    call (default 50). ``save_adv``: keep the best attack's x_adv in the sidecar.
    ``device``: torch device; the only field that may change when a run is resumed.
    """

    model: str
    dataset: str | None = None
    root: str | None = None
    split: str = "test"
    n: int = 100
    start: int = 0
    attributions: tuple[str, ...] = ("saliency",)
    attribution_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    norms: tuple[str, ...] = ("2", "inf")
    eps: tuple[float, ...] = (0.05, 0.1, 0.2)
    bounds: tuple[str, ...] = ("taylor", "region")
    attacks: tuple[str, ...] = ("pgd", "ifia_topk", "random")
    steps: int | None = None
    restarts: int = 1
    samples: int | None = None
    k: int | None = None
    objective: str = "euclidean"
    bound_options: dict[str, Any] = field(default_factory=dict)
    surrogate_beta: float | None = None
    seed: int = 0
    batch_size: int = 50
    save_adv: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        from attrbound._validate import check_eps
        from attrbound.attributions import NAMES
        from attrbound.geometry import parse_norm

        self.model = str(self.model)
        self.root = None if self.root is None else str(self.root)
        self.attributions = tuple(
            check_choice("attribution method", str(a).lower().replace("-", "_"), NAMES)
            for a in _as_list(self.attributions)
        )
        self.norms = tuple(parse_norm(p) for p in _as_list(self.norms))
        self.eps = tuple(check_eps(e) for e in _as_list(self.eps))
        self.bounds = tuple(check_choice("bound method", b, BOUND_METHODS)
                            for b in _as_list(self.bounds))
        self.attacks = tuple(check_choice("attack method", a, ATTACK_METHODS)
                             for a in _as_list(self.attacks))
        for name, values in (("attribution", self.attributions), ("norm", self.norms),
                             ("eps", self.eps), ("bound", self.bounds), ("attack", self.attacks)):
            if len(set(values)) != len(values):
                raise AttrboundError(f"the {name} list {list(values)} repeats an entry.")
        if not (self.attributions and self.norms and self.eps):
            raise AttrboundError("the grid needs at least one attribution, norm and eps.")
        if not (self.bounds or self.attacks):
            raise AttrboundError("the grid needs at least one bound method or attack.")
        check_choice("split", self.split, ("train", "test"))
        check_choice("objective", self.objective, ("euclidean", "cosine"))
        for name in ("n", "batch_size", "restarts"):
            if int(getattr(self, name)) < 1:
                raise AttrboundError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("steps", "samples", "k"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise AttrboundError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.start < 0:
            raise AttrboundError(f"start must be >= 0, got {self.start}.")
        if self.surrogate_beta is not None and not float(self.surrogate_beta) > 0:
            raise AttrboundError(f"surrogate_beta must be > 0, got {self.surrogate_beta}.")
        _check_tables("attribution_options", self.attribution_options, NAMES, "methods",
                      '{"integrated_gradients": {"steps": 16}}')
        _check_tables("bound_options", self.bound_options, BOUND_METHODS, "bound methods",
                      '{"region": {"ascent_steps": 5}}')

    @property
    def configs(self) -> list[tuple[str, str, float]]:
        """The configurations (attribution, norm, eps), in run order."""
        return [(a, p, e) for a in self.attributions for p in self.norms for e in self.eps]

    def identity(self, model_sha256: str) -> dict[str, Any]:
        """Every setting that changes the rows: the grid without ``model`` (the file's path)
        and ``device``, plus the checkpoint's SHA-256 and the package version."""
        from attrbound import __version__

        ident = dataclasses.asdict(self)
        for key in ("model", "device"):
            ident.pop(key)
        ident.update({"model_sha256": model_sha256, "version": __version__})
        return json.loads(json.dumps(ident, sort_keys=True))  # tuples -> lists

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Grid:
        """A grid from a plain dict (e.g. a TOML file); list fields may also be strings
        "a,b". Unknown keys raise one clear error."""
        names = {f.name for f in dataclasses.fields(cls)}
        aliases = {"attribution": "attributions", "norm": "norms", "bound": "bounds",
                   "attack": "attacks", "batch-size": "batch_size",
                   "surrogate-beta": "surrogate_beta"}
        clean: dict[str, Any] = {}
        for key, value in values.items():
            name = aliases.get(key, key.replace("-", "_"))
            name = aliases.get(name, name)
            if name not in names:
                raise AttrboundError(f"unknown grid setting {key!r}; known: {sorted(names)}.")
            clean[name] = value
        if "model" not in clean:
            raise AttrboundError("the grid needs a model checkpoint (model = 'FILE').")
        return cls(**clean)


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [s.strip() for s in value.split(",") if s.strip()]
    if isinstance(value, (int, float)):
        return [value]
    return list(value)


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """The table of a TOML grid file (tomllib on Python >= 3.11, else tomli)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    path = Path(path)
    if not path.is_file():
        raise AttrboundError(f"no grid file at {path}.")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise AttrboundError(f"{path} is not valid TOML ({exc}).") from None


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def config_id(identity: dict[str, Any]) -> str:
    """A short digest of an identity dict (16 hex digits of its canonical JSON's SHA-256)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------
# Rows: best attack, violations
# ----------------------------------------------------------------------------------------


def _finite(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def best_attacks(attacks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per metric, the strongest attack among those that kept the label.

    ``attacks``: attack name -> its figures (``euclidean``, ``cosine``, ``topk_intersection``,
    ``kendall``, ``spearman``, ``label_kept``; an entry with ``error`` is ignored).
    Returns metric -> {"value": float | None, "attack": name | None}: the max over attacks of
    euclidean, the min of the others (:data:`ATTACK_METRICS`); ties go to the first attack.
    """
    out: dict[str, dict[str, Any]] = {}
    for metric, sense in ATTACK_METRICS.items():
        best: tuple[float, str] | None = None
        for name, res in attacks.items():
            if "error" in res or not res.get("label_kept", False):
                continue
            v = _finite(res.get(metric))
            if v is None:
                continue
            if best is None or (v > best[0] if sense == "max" else v < best[0]):
                best = (v, name)
        out[metric] = {"value": None if best is None else best[0],
                       "attack": None if best is None else best[1]}
    return out


def violation(
    attack_euclidean: float | None,
    bound_euclidean: float | None,
    attack_cosine: float | None = None,
    bound_cosine: float | None = None,
) -> dict[str, bool | None]:
    """Whether the best attack beat a bound (None where either figure is missing):

        euclidean: L > U (1 + 1e-6) + 1e-9;     cosine: l < C - 1e-6

    with L, l the best attack's euclidean deviation and cosine similarity, U, C the bound's
    euclidean upper bound and cosine lower bound.
    """
    le, ue = _finite(attack_euclidean), _finite(bound_euclidean)
    lc, uc = _finite(attack_cosine), _finite(bound_cosine)
    return {
        "euclidean": None if le is None or ue is None
        else le > ue * (1 + EUCLIDEAN_RTOL) + EUCLIDEAN_ATOL,
        "cosine": None if lc is None or uc is None else lc < uc - COSINE_ATOL,
    }


def tightness(attack_euclidean: float | None, bound_euclidean: float | None) -> float | None:
    """L / U (the best attack over the bound, 1 = tight); None if U is missing or 0."""
    le, ue = _finite(attack_euclidean), _finite(bound_euclidean)
    if le is None or ue is None or ue <= 0:
        return None
    return le / ue


def make_row(
    *,
    index: int,
    label: int,
    pred: int,
    attribution: str,
    norm: str,
    eps: float,
    bounds: dict[str, dict[str, Any]],
    attacks: dict[str, dict[str, Any]],
    attr_norm: float | None,
    seconds: dict[str, float],
    config: dict[str, Any],
    seed: int,
    adv: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble one row from per-method figures. Fields:

    - ``index`` (in the dataset split), ``label`` (true class), ``pred`` (predicted class,
      the one explained), ``attribution``, ``norm``, ``eps``, ``attr_norm`` ||A(x)||_2;
    - ``bounds``: method -> {``euclidean``, ``cosine``, ``operator_norm``, ...} or {``error``};
    - ``attacks``: method -> {``euclidean``, ``cosine``, ``topk_intersection``, ``kendall``,
      ``spearman``, ``label_kept``, ``found``, ``runs``, ...} or {``error``};
    - ``best``: metric -> {``value``, ``attack``} (:func:`best_attacks`);
    - ``violated``: bound method -> {``euclidean``, ``cosine``} (:func:`violation`);
    - ``tightness``: bound method -> best euclidean attack / bound (:func:`tightness`);
    - ``attack_runs``: attack runs (inputs x restarts) spent on this row;
    - ``seconds``: per-method and total wall time attributed to this row (its share of the
      batch call); a taylor taken from the region bound's solve (``taylor_from_region``) shows
      that part of region's time, which ``total`` counts once;
    - ``seed`` (of this row's unit), ``config`` (the campaign identity plus ``config_id``,
      ``model`` path, ``torch`` version), ``adv`` (sidecar file and position of x_adv).
    """
    best = best_attacks(attacks)
    violated = {
        m: violation(best["euclidean"]["value"], b.get("euclidean"),
                     best["cosine"]["value"], b.get("cosine"))
        for m, b in bounds.items()
    }
    tight = {m: tightness(best["euclidean"]["value"], b.get("euclidean"))
             for m, b in bounds.items()}
    row = {
        "index": int(index),
        "label": int(label),
        "pred": int(pred),
        "attribution": attribution,
        "norm": norm,
        "eps": float(eps),
        "attr_norm": _finite(attr_norm),
        "bounds": bounds,
        "attacks": attacks,
        "best": best,
        "violated": violated,
        "tightness": tight,
        "attack_runs": int(sum(int(a.get("runs", 0)) for a in attacks.values())),
        "seconds": seconds,
        "seed": int(seed),
        "config": config,
        "adv": adv,
    }
    return _sanitize(row)


def _sanitize(value: Any) -> Any:
    """Non-finite floats -> None (strict JSON), tuples -> lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    return value


def row_key(row: dict[str, Any]) -> Key:
    """(index, attribution, norm, eps) of a row."""
    return (int(row["index"]), str(row["attribution"]), str(row["norm"]), float(row["eps"]))


def without_timings(row: dict[str, Any]) -> dict[str, Any]:
    """The row without its ``seconds`` fields (for comparing two runs)."""
    if isinstance(row, dict):
        return {k: without_timings(v) for k, v in row.items() if k != "seconds"}
    return row


# ----------------------------------------------------------------------------------------
# The rows file
# ----------------------------------------------------------------------------------------


def read_rows(path: str | os.PathLike, *, repair: bool = False) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file, tolerating a truncated or unreadable LAST line.

    Such a line is what a crash mid-write leaves; it is ignored, and with ``repair=True`` cut
    off the file (so that appending continues on a clean line). An unreadable line before the
    last one raises AttrboundError (the file is corrupt, not merely cut short).
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows: list[dict[str, Any]] = []
    good_end = 0
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        line = data[pos:end]
        try:
            if nl < 0:
                raise ValueError("no newline")
            row = json.loads(line) if line.strip() else None
            if row is not None and not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError:
            if end < len(data):
                lineno = data.count(b"\n", 0, pos) + 1
                raise AttrboundError(
                    f"{path} is corrupt: line {lineno} is not a JSON object, and it is not "
                    "the last line; remove or repair it, or write to a new file."
                ) from None
            break
        if row is not None:
            rows.append(row)
        good_end = end
        pos = end
    if repair and good_end < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
            fh.flush()
            os.fsync(fh.fileno())
    return rows


def append_rows(fh: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Append rows to an open binary file in ONE write, then flush and fsync."""
    text = "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in rows)
    fh.write(text.encode())
    fh.flush()
    os.fsync(fh.fileno())


@contextlib.contextmanager
def _locked_append(path: Path) -> Iterator[Any]:
    """Open ``path`` for appending under an exclusive, non-blocking lock (POSIX flock)."""
    fh = open(path, "ab")
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            fcntl = None  # type: ignore[assignment]
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise AttrboundError(
                    f"another process is writing {path}; wait for it or choose another --out."
                ) from None
        yield fh
    finally:
        fh.close()


def _check_config(rows: list[dict[str, Any]], ident: dict[str, Any], cid: str,
                  path: Path) -> None:
    for row in rows:
        old = row.get("config") or {}
        if old.get("config_id") == cid:
            continue
        changed = sorted(k for k in set(ident) | set(old)
                         if k not in ("config_id", "model", "torch")
                         and old.get(k) != ident.get(k))
        raise ConfigMismatch(
            f"{path} holds rows of a different configuration (changed: "
            f"{', '.join(changed) or 'unknown'}); use a new --out file, or --overwrite to "
            "discard them."
        )


def _sync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def adv_dir(out: str | os.PathLike) -> Path:
    """The sidecar folder of x_adv files next to a rows file: ``<out>.adv``."""
    out = Path(out)
    return out.with_name(out.name + ".adv")


def _save_adv(folder: Path, name: str, x_adv: Tensor, index: Tensor) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (name + ".tmp")
    save_file({"x_adv": x_adv.detach().float().cpu().contiguous(),
               "index": index.detach().long().cpu().contiguous()}, str(tmp))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, folder / name)
    _sync_dir(folder)


def load_adv(out: str | os.PathLike, adv: dict[str, Any]) -> Tensor:
    """x_adv [*S] of one row, from its ``adv`` field {"file", "row"} and the rows file path."""
    from safetensors.torch import load_file

    path = adv_dir(out) / adv["file"]
    if not path.is_file():
        raise AttrboundError(f"the x_adv sidecar {path} is missing.")
    return load_file(str(path))["x_adv"][int(adv["row"])]


# ----------------------------------------------------------------------------------------
# One unit: a batch of inputs under one configuration
# ----------------------------------------------------------------------------------------

BoundFn = Callable[..., Any]
AttackFn = Callable[..., Any]


def _accepts(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return set(), True
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return set(params), var_kw


def _call(fn: Callable[..., Any], model: Any, x: Tensor, *, optional: dict[str, Any],
          **kwargs: Any) -> Any:
    """fn(model, x, **kwargs, **optional), dropping the ``optional`` keywords fn does not take.

    Attribution options go as ``attribution_options`` when fn takes them, else are bound into
    an Attribution object passed as ``attribution``.
    """
    names, var_kw = _accepts(fn)
    opts = kwargs.pop("attribution_options", None) or {}
    if opts and not (var_kw or "attribution_options" in names):
        from attrbound.attributions import attribution as make_attribution

        kwargs["attribution"] = make_attribution(kwargs["attribution"], model, **opts)
    elif opts:
        kwargs["attribution_options"] = opts
    for k, v in optional.items():
        if var_kw or k in names:
            kwargs[k] = v
    return fn(model, x, **kwargs)


def _taylor_in_region(grid: Grid, bound_fn: BoundFn) -> bool:
    """True when the taylor rows can be taken from the region bound's own solve at x
    (:func:`attrbound.bounds.taylor_from_region`): both methods in the grid, the library's
    bound function, and the same solver options for both."""
    from attrbound.bounds import SOLVER_OPTIONS, bound

    if bound_fn is not bound or not {"taylor", "region"} <= set(grid.bounds):
        return False
    t, r = grid.bound_options.get("taylor", {}), grid.bound_options.get("region", {})
    return set(t) <= set(SOLVER_OPTIONS) and all(
        t.get(k, v) == r.get(k, v) for k, v in SOLVER_OPTIONS.items()
    )


def _result_rows(res: Any, drop: Sequence[str]) -> list[dict[str, Any]]:
    rows = res.to_rows()
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


_BOUND_DROP = ("method", "attribution", "norm", "eps", "seconds", "attr_norm",
               # region's copy of taylor's solve at x (the taylor rows carry it)
               "iterations_x", "converged_x", "lower_x", "operator_norm_v0_x", "seconds_x")
_ATTACK_DROP = ("method", "attribution", "attribution_options", "norm", "eps", "seconds",
                "attr_norm", "k", "steps", "restarts", "step_size", "samples", "seed",
                "surrogate_beta")


def evaluate_unit(
    grid: Grid,
    model: Any,
    x: Tensor,
    indices: Sequence[int],
    labels: Sequence[int],
    preds: Sequence[int],
    attribution: str,
    norm: str,
    eps: float,
    *,
    seed: int,
    config: dict[str, Any],
    bound_fn: BoundFn,
    attack_fn: AttackFn,
    warn: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], Tensor | None, list[str | None]]:
    """Run every attack, then every bound, on a batch x [b, *S] for one configuration.

    Attacks get ``seed``; the region bound gets the attacks' points (each attack's
    ``points`` [b, P, *S] and ``x_adv``, concatenated to [b, P_total, *S]) and the same seed
    where it takes one. A method that raises :class:`AttrboundError` (e.g. a bound that does
    not support this attribution) gets ``{"error": message}`` in the rows and one warning.

    Returns (rows [b], x_adv of the best euclidean attack per input [b, *S] or None, the
    name of that attack per input).
    """
    b = x.shape[0]
    opts = grid.attribution_options.get(attribution, {})
    beta = grid.surrogate_beta
    attack_rows: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    x_advs: dict[str, Tensor] = {}
    points: list[Tensor] = []
    attr_norm: list[float] | None = None
    for method in grid.attacks:
        started = time.perf_counter()
        try:
            res = _call(
                attack_fn, model, x, eps=eps, norm=norm, attribution=attribution,
                attribution_options=opts, method=method,
                optional={"objective": grid.objective, "steps": grid.steps,
                          "restarts": grid.restarts, "k": grid.k, "n": grid.samples,
                          "seed": seed, "surrogate_beta": beta},
            )
        except AttrboundError as exc:
            warn(f"attack {method} ({attribution}, l{norm}, eps {eps:g}): {exc}")
            attack_rows[method] = [{"error": str(exc)}] * b
            continue
        seconds[f"attack:{method}"] = (time.perf_counter() - started) / b
        attack_rows[method] = _result_rows(res, _ATTACK_DROP)
        x_advs[method] = res.x_adv
        points += [res.x_adv.unsqueeze(1), res.points]
        if attr_norm is None:
            attr_norm = res.attr_norm.detach().cpu().tolist()
    pts = torch.cat(points, dim=1) if points else None
    bound_rows: dict[str, list[dict[str, Any]]] = {}
    reuse = _taylor_in_region(grid, bound_fn)
    region_res: Any = None
    shared: set[str] = set()  # timings already inside another's
    for method in sorted(grid.bounds, key=lambda m: reuse and m == "taylor"):  # taylor last
        if method == "taylor" and region_res is not None:
            from attrbound.bounds import taylor_from_region

            res = taylor_from_region(region_res)
            seconds["bound:taylor"] = res.seconds / b  # part of region's time, not added
            shared.add("bound:taylor")
            bound_rows[method] = _result_rows(res, _BOUND_DROP)
            continue
        started = time.perf_counter()
        # interval is certified on the real model (ReLU exactly) and draws nothing at random
        optional: dict[str, Any] = {} if method == "interval" else {
            "surrogate_beta": beta, "seed": seed}
        if method == "region" and pts is not None:
            optional["points"] = pts
        try:
            res = _call(bound_fn, model, x, eps=eps, norm=norm, attribution=attribution,
                        attribution_options=opts, method=method, optional=optional,
                        **grid.bound_options.get(method, {}))
        except AttrboundError as exc:
            warn(f"bound {method} ({attribution}, l{norm}, eps {eps:g}): {exc}")
            bound_rows[method] = [{"error": str(exc)}] * b
            continue
        seconds[f"bound:{method}"] = (time.perf_counter() - started) / b
        bound_rows[method] = _result_rows(res, _BOUND_DROP)
        if method == "region" and reuse:
            region_res = res
        if attr_norm is None:
            attr_norm = res.attr_norm.detach().cpu().tolist()
    bound_rows = {m: bound_rows[m] for m in grid.bounds if m in bound_rows}
    seconds = {**{k: v for k, v in seconds.items() if not k.startswith("bound:")},
               **{f"bound:{m}": seconds[f"bound:{m}"] for m in grid.bounds
                  if f"bound:{m}" in seconds}}

    rows: list[dict[str, Any]] = []
    best_names: list[str | None] = []
    for i in range(b):
        attacks = {m: dict(r[i]) for m, r in attack_rows.items()}
        bounds = {m: dict(r[i]) for m, r in bound_rows.items()}
        secs = dict(seconds)
        secs["total"] = sum(v for k, v in seconds.items() if k not in shared)
        row = make_row(
            index=indices[i], label=labels[i], pred=preds[i], attribution=attribution,
            norm=norm, eps=eps, bounds=bounds, attacks=attacks,
            attr_norm=None if attr_norm is None else attr_norm[i], seconds=secs,
            config=config, seed=seed,
        )
        rows.append(row)
        best_names.append(row["best"]["euclidean"]["attack"])
    x_best = None
    if x_advs:
        names = list(x_advs)
        stacked = torch.stack([x_advs[m] for m in names])  # [M, b, *S]
        pick = torch.tensor([names.index(m) if m in x_advs else 0 for m in best_names],
                            device=stacked.device)
        x_best = stacked[pick, torch.arange(b, device=stacked.device)]
    return rows, x_best, best_names


# ----------------------------------------------------------------------------------------
# The campaign
# ----------------------------------------------------------------------------------------


def _unit_name(first: int, attribution: str, norm: str, eps: float) -> str:
    return f"{first:07d}-{attribution}-l{norm}-eps{eps!r}.safetensors"


def run_campaign(
    grid: Grid,
    out: str | os.PathLike,
    *,
    progress: bool = True,
    overwrite: bool = False,
    bound_fn: BoundFn | None = None,
    attack_fn: AttackFn | None = None,
    model: Any = None,
    images: Tensor | None = None,
    labels: Tensor | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) the campaign ``grid``, appending rows to the JSON-lines file ``out``.

    Loops over batches of inputs (outer) and configurations (inner), so that an interrupted
    run has covered all configurations of its first inputs. See the module docstring for
    the row fields, resuming (a file of another configuration is refused unless
    ``overwrite``), and the x_adv sidecar. A tqdm bar over units (batches x configurations)
    shows the ETA when ``progress``.

    ``bound_fn`` / ``attack_fn`` default to :func:`attrbound.bounds.bound` and
    :func:`attrbound.attacks.attack`; ``model``, ``images`` [N, *S] and ``labels`` [N] (the
    whole split, indexed by dataset index) default to loading ``grid.model`` and the dataset.

    Returns all rows of this configuration in ``out`` (previous and new), in file order.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    model_path = Path(grid.model)
    if not model_path.is_file():
        raise AttrboundError(f"no model checkpoint at {model_path}.")
    sha = file_sha256(model_path)
    if model is None:
        from attrbound import models

        model = models.load(model_path, device=grid.device)
    dataset = grid.dataset or (getattr(model, "config", {}) or {}).get("dataset")
    if images is None or labels is None:
        if not dataset:
            raise AttrboundError("the checkpoint names no dataset; set the grid's dataset.")
        from attrbound import data

        dataset = data.canonical_name(dataset)
        images, labels = data.load(dataset, split=grid.split, root=grid.root)
    if grid.start >= len(images):
        raise AttrboundError(f"start {grid.start} is past the {len(images)} inputs of the split.")
    stop = min(len(images), grid.start + grid.n)
    require_smooth_or_surrogate(
        model, grid.surrogate_beta,
        [m for m in grid.bounds if m != "interval"] + [m for m in grid.attacks if m != "random"],
        flag="--surrogate-beta",
    )
    if bound_fn is None and grid.bounds:
        from attrbound.bounds import bound as bound_fn
    if attack_fn is None and grid.attacks:
        from attrbound.attacks import attack as attack_fn

    if bound_fn is not None:
        names, var_kw = _accepts(bound_fn)
        for method, opts in grid.bound_options.items():
            unknown = sorted(set(opts) - names) if not var_kw else []
            if unknown:
                raise AttrboundError(
                    f"bound_options of {method} has keywords the bound does not take: {unknown}."
                )

    ident = grid.identity(sha)
    ident["dataset"] = dataset
    cid = config_id(ident)
    config = {**ident, "config_id": cid, "model": str(grid.model), "torch": torch.__version__}

    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked_append(out) as fh:
        if overwrite:
            fh.truncate(0)
            folder = adv_dir(out)
            if folder.is_dir():
                for f in folder.glob("*.safetensors*"):
                    f.unlink()
        rows = read_rows(out, repair=True)
        _check_config(rows, ident, cid, out)
        done = {row_key(r) for r in rows}
        starts = list(range(grid.start, stop, grid.batch_size))
        units = [(lo, cfg) for lo in starts for cfg in grid.configs]

        def keys(lo: int, cfg: tuple[str, str, float]) -> list[Key]:
            hi = min(lo + grid.batch_size, stop)
            return [(i, cfg[0], cfg[1], cfg[2]) for i in range(lo, hi)]

        todo = [(lo, cfg) for lo, cfg in units if not all(k in done for k in keys(lo, cfg))]
        bar = tqdm(total=len(units), initial=len(units) - len(todo), unit="unit",
                   desc="evaluate", disable=not progress, dynamic_ncols=True)
        warned: set[str] = set()

        def warn(msg: str) -> None:
            if msg not in warned:
                warned.add(msg)
                bar.write(f"warning: {msg}")

        current: tuple[int, list[int]] = (-1, [])
        try:
            for lo, (attribution, norm, eps) in todo:
                hi = min(lo + grid.batch_size, stop)
                x = images[lo:hi].to(grid.device)
                if current[0] != lo:  # predicted classes, once per batch
                    with torch.no_grad():
                        current = (lo, model(x).argmax(dim=1).cpu().tolist())
                preds = current[1]
                unit_rows, x_best, _ = evaluate_unit(
                    grid, model, x, list(range(lo, hi)), labels[lo:hi].tolist(), preds,
                    attribution, norm, eps, seed=grid.seed + lo, config=config,
                    bound_fn=bound_fn, attack_fn=attack_fn, warn=warn,
                )
                if grid.save_adv and x_best is not None:
                    name = _unit_name(lo, attribution, norm, eps)
                    _save_adv(adv_dir(out), name, x_best, torch.arange(lo, hi))
                    for i, r in enumerate(unit_rows):
                        r["adv"] = {"file": name, "row": i,
                                    "attack": r["best"]["euclidean"]["attack"]}
                new = [r for r in unit_rows if row_key(r) not in done]
                append_rows(fh, new)
                done.update(row_key(r) for r in new)
                rows.extend(new)
                bar.update(1)
        finally:
            bar.close()
    return rows


# ----------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------


def _values(rows: list[dict[str, Any]], get: Callable[[dict[str, Any]], Any]) -> list[float]:
    out = []
    for r in rows:
        try:
            v = _finite(get(r))
        except (KeyError, TypeError):
            v = None
        if v is not None:
            out.append(v)
    return out


def _mean(v: list[float]) -> float | None:
    return sum(v) / len(v) if v else None


def group_rows(rows: list[dict[str, Any]]) -> dict[tuple[str, str, float], list[dict[str, Any]]]:
    """Rows grouped by (attribution, norm, eps), groups in order of first appearance."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["attribution"], r["norm"], float(r["eps"])), []).append(r)
    return groups


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per (attribution, norm, eps), sorted by attribution (first appearance),
    norm and eps:

    - ``n`` rows, ``attack_runs`` (sum), ``seconds`` (sum of row totals);
    - ``attack``: mean / median / max of the best attack's euclidean deviation
      (``euclidean_mean``, ``euclidean_median``, ``euclidean_max``), mean / min of its cosine
      (``cosine_mean``, ``cosine_min``);
    - ``bounds``: method -> ``euclidean_mean``, ``euclidean_median``, ``euclidean_max``,
      ``cosine_mean``, ``cosine_min``, ``tightness_median`` (median over rows of attack /
      bound), ``violations`` (rows with a violation of either metric),
      ``violations_euclidean``, ``violations_cosine``, ``errors`` (rows where the method
      failed, or returned a non-finite euclidean bound: such a row can flag no violation).
    Means, medians and extremes skip missing values; a figure with none is None.
    """
    groups = group_rows(rows)
    order = {a: i for i, a in enumerate(dict.fromkeys(r["attribution"] for r in rows))}
    out = []
    for (attribution, norm, eps), grp in sorted(
        groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1] != "2", kv[0][1], kv[0][2])
    ):
        best_e = _values(grp, lambda r: r["best"]["euclidean"]["value"])
        best_c = _values(grp, lambda r: r["best"]["cosine"]["value"])
        summary: dict[str, Any] = {
            "attribution": attribution,
            "norm": norm,
            "eps": eps,
            "n": len(grp),
            "attack_runs": sum(int(r.get("attack_runs", 0)) for r in grp),
            "seconds": sum(_values(grp, lambda r: r["seconds"]["total"])),
            "attack": {
                "euclidean_mean": _mean(best_e),
                "euclidean_median": statistics.median(best_e) if best_e else None,
                "euclidean_max": max(best_e) if best_e else None,
                "cosine_mean": _mean(best_c),
                "cosine_min": min(best_c) if best_c else None,
            },
            "bounds": {},
        }
        methods = list(dict.fromkeys(m for r in grp for m in r.get("bounds", {})))
        for m in methods:
            have = [r for r in grp if m in r.get("bounds", {})]
            ue = _values(have, lambda r, m=m: r["bounds"][m]["euclidean"])
            uc = _values(have, lambda r, m=m: r["bounds"][m]["cosine"])
            tt = _values(have, lambda r, m=m: r["tightness"][m])
            ve = [bool(r["violated"][m]["euclidean"]) for r in have]
            vc = [bool(r["violated"][m]["cosine"]) for r in have]
            summary["bounds"][m] = {
                "euclidean_mean": _mean(ue),
                "euclidean_median": statistics.median(ue) if ue else None,
                "euclidean_max": max(ue) if ue else None,
                "cosine_mean": _mean(uc),
                "cosine_min": min(uc) if uc else None,
                "tightness_median": statistics.median(tt) if tt else None,
                "violations": sum(a or c for a, c in zip(ve, vc, strict=True)),
                "violations_euclidean": sum(ve),
                "violations_cosine": sum(vc),
                "errors": sum("error" in r["bounds"][m]
                              or _finite(r["bounds"][m].get("euclidean")) is None for r in have),
            }
        out.append(summary)
    return out


def _fmt(v: Any, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def format_summary(summary: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`summarize`'s output: one line per (attribution, norm,
    eps) and bound method, with the best attack's mean / max euclidean deviation, the
    bound's mean / max, the median tightness (attack / bound), attack runs and violations
    (euclidean / cosine)."""
    head = (f"{'attribution':<22}{'norm':>5}{'eps':>8}{'n':>6}{'attack mean':>13}{'max':>11}"
            f"  {'bound':<9}{'mean':>11}{'max':>11}{'tight.med':>10}{'runs':>8}"
            f"{'viol(e/c)':>11}")
    lines = [head, "-" * len(head)]
    total_runs = 0
    total_viol: dict[str, int] = {}
    for s in summary:
        total_runs += s["attack_runs"]
        bounds = s["bounds"] or {"-": None}
        for j, (m, b) in enumerate(bounds.items()):
            lead = (f"{s['attribution']:<22}{s['norm']:>5}{s['eps']:>8.4g}{s['n']:>6}"
                    f"{_fmt(s['attack']['euclidean_mean']):>13}"
                    f"{_fmt(s['attack']['euclidean_max']):>11}") if j == 0 else " " * 65
            if b is None:
                lines.append(f"{lead}  {'-':<9}{'':>40}{s['attack_runs']:>8}")
                continue
            total_viol[m] = total_viol.get(m, 0) + b["violations"]
            viol = f"{b['violations_euclidean']}/{b['violations_cosine']}"
            if b["errors"]:
                viol += f" ({b['errors']} err)"
            lines.append(
                f"{lead}  {m:<9}{_fmt(b['euclidean_mean']):>11}{_fmt(b['euclidean_max']):>11}"
                f"{_fmt(b['tightness_median'], '.3f'):>10}"
                f"{s['attack_runs'] if j == 0 else '':>8}{viol:>11}"
            )
    viol_text = ", ".join(f"{m}: {v}" for m, v in total_viol.items()) or "no bounds"
    lines.append("-" * len(head))
    lines.append(f"attack runs: {total_runs}; inputs with a violation, per bound: {viol_text}")
    return "\n".join(lines)
