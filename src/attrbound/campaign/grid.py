"""What a campaign evaluates: the :class:`Grid` of settings, its identity and its TOML form.

The grid is the cross product attributions x norms x eps (one *configuration* each) over
``n`` inputs, with the bound methods and attacks run on every (input, configuration) and the
budgets they run with. :meth:`Grid.identity` is every setting that changes the rows; its
digest :func:`config_id` tags each row, so that a rows file is only ever resumed by the
configuration that wrote it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attrbound import __version__
from attrbound._validate import check_domain, check_eps
from attrbound.attributions import NAMES
from attrbound.bounds import OPTIONS as BOUND_OPTIONS
from attrbound.errors import AttrboundError, check_choice
from attrbound.geometry import parse_norm

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

BOUND_METHODS = ("taylor", "region", "interval", "smoothed")
ATTACK_METHODS = ("pgd", "ifia_topk", "ifia_center", "random")
#: bound keywords the campaign sets itself, per unit (not allowed in ``bound_options``)
CAMPAIGN_BOUND_KEYWORDS = frozenset({"seed", "points", "surrogate_beta"})


def _check_tables(
    name: str, value: Any, known: tuple[str, ...], what: str, example: str
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


def _check_bound_options(bound_options: dict[str, dict[str, Any]]) -> None:
    """Every keyword must be an option of that method (:data:`attrbound.bounds.OPTIONS`) and
    not one the campaign passes itself."""
    for method, opts in bound_options.items():
        accepted = BOUND_OPTIONS.get(method, frozenset()) - CAMPAIGN_BOUND_KEYWORDS
        unknown = sorted(set(opts) - accepted)
        if unknown:
            raise AttrboundError(
                f"bound_options of {method} has keywords the bound does not take: {unknown}."
            )


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [s.strip() for s in value.split(",") if s.strip()]
    if isinstance(value, (int, float)):
        return [value]
    return list(value)


@dataclass
class Grid:
    """What to evaluate: model, inputs, settings and budgets of one campaign.

    Model: ``model`` is an attrbound checkpoint, a torch.export ``.pt2`` archive or
    ``package.module:factory`` with ``weights`` (a safetensors state dict); ``mean`` / ``std``
    wrap it as model((x - mean) / std), per channel (:func:`attrbound.intake.load_model`).
    Inputs: ``n`` inputs of ``split`` from index ``start`` of ``dataset`` (default: the one in
    the checkpoint), bundled subset or the full files under ``root``; or of ``data``, a
    safetensors file (``images``, ``labels``) or an image folder, resized to ``size``
    (:func:`attrbound.intake.load_data`). ``domain``: the input box (lo, hi), default (0, 1).
    Grid: ``attributions`` x ``norms`` x ``eps``; ``attribution_options`` maps a method name to
    its options (e.g. ``{"integrated_gradients": {"steps": 16}}``).
    Methods: ``bounds`` (subset of taylor, region, interval), ``attacks`` (subset of pgd,
    ifia_topk, ifia_center, random); at least one of either.
    Budgets (None = the library default of :func:`attrbound.attack`: APGD with 2 runs of 25
    steps, or 20 steps and 1 run for ``schedule="fixed"``): attack ``steps``, ``step_size``,
    ``restarts``, random ``samples`` (200), top-k ``k`` (100 on 28x28),
    pgd/random ``objective`` (euclidean); ``bound_options``: per bound method, options of
    :func:`attrbound.bounds.bound` (e.g. ``{"region": {"ascent_steps": 5}}``), checked against
    :data:`attrbound.bounds.OPTIONS`; ``seed``, ``points`` and ``surrogate_beta`` are set by
    the campaign.
    ``surrogate_beta``: softplus surrogate for ReLU / max-pool models (practical bounds and
    attacks; ``interval`` bounds the real model).
    ``seed``: a unit whose first input has index i uses seed + i. ``batch_size``: inputs per
    call (default 50). ``save_adv``: keep the best attack's x_adv in the sidecar.
    ``device``: torch device; the only field that may change when a run is resumed.
    """

    model: str
    weights: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    dataset: str | None = None
    root: str | None = None
    data: str | None = None
    size: tuple[int, int] | None = None
    domain: tuple[float, float] = (0.0, 1.0)
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
    step_size: float | None = None
    restarts: int | None = None
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
        self.model = str(self.model)
        self.root = None if self.root is None else str(self.root)
        self.weights = None if self.weights is None else str(self.weights)
        self.data = None if self.data is None else str(self.data)
        self.domain = check_domain(_as_list(self.domain))  # type: ignore[assignment]
        if self.domain is None:
            raise AttrboundError("the grid's domain must be (lo, hi).")
        self.size = None if self.size is None else tuple(int(s) for s in _as_list(self.size))
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise AttrboundError(f"size must be (H, W) with H, W >= 1, got {self.size}.")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(float(v) for v in _as_list(value)))
        if (self.mean is None) != (self.std is None):
            raise AttrboundError("give both mean and std, or neither.")
        if self.data is not None and self.dataset is not None:
            raise AttrboundError("give the inputs as data (a file or folder) or as dataset, "
                                 "not both.")
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
        if "smoothed" in self.bounds and self.attacks and set(self.attributions) != {"smoothed"}:
            raise AttrboundError("bound method smoothed certifies the smoothed map: with attacks, "
                                 "use attribution smoothed, so that they attack the same map.")
        check_choice("split", self.split, ("train", "test"))
        check_choice("objective", self.objective, ("euclidean", "cosine"))
        for name in ("n", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise AttrboundError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("steps", "samples", "k", "restarts"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise AttrboundError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.step_size is not None and not float(self.step_size) > 0:
            raise AttrboundError(f"step_size must be > 0, got {self.step_size}.")
        if self.start < 0:
            raise AttrboundError(f"start must be >= 0, got {self.start}.")
        if self.surrogate_beta is not None and not float(self.surrogate_beta) > 0:
            raise AttrboundError(f"surrogate_beta must be > 0, got {self.surrogate_beta}.")
        _check_tables("attribution_options", self.attribution_options, NAMES, "methods",
                      '{"integrated_gradients": {"steps": 16}}')
        _check_tables("bound_options", self.bound_options, BOUND_METHODS, "bound methods",
                      '{"region": {"ascent_steps": 5}}')
        _check_bound_options(self.bound_options)

    @property
    def configs(self) -> list[tuple[str, str, float]]:
        """The configurations (attribution, norm, eps), in run order."""
        return [(a, p, e) for a in self.attributions for p in self.norms for e in self.eps]

    def identity(self, model_sha256: str, data_sha256: str | None = None) -> dict[str, Any]:
        """Every setting that changes the rows: the grid without the paths of ``model``,
        ``weights`` and ``data`` and without ``device``, plus the SHA-256 of the model's bytes
        (checkpoint or archive; for a factory, of its weights, the factory's name staying in
        ``model_factory``), of the data's bytes when ``data`` is given, and the package
        version."""
        ident = dataclasses.asdict(self)
        for key in ("model", "device", "weights", "data"):
            ident.pop(key)
        if self.weights is not None:
            ident["model_factory"] = self.model
        if data_sha256 is not None:
            ident["data_sha256"] = data_sha256
        ident.update({"model_sha256": model_sha256, "version": __version__})
        return json.loads(json.dumps(ident, sort_keys=True))  # tuples -> lists

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Grid:
        """A grid from a plain dict (e.g. a TOML file); list fields may also be strings
        "a,b". Unknown keys raise one clear error."""
        names = {f.name for f in dataclasses.fields(cls)}
        aliases = {"attribution": "attributions", "norm": "norms", "bound": "bounds",
                   "attack": "attacks", "batch-size": "batch_size",
                   "surrogate-beta": "surrogate_beta", "step-size": "step_size"}
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


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """The table of a TOML grid file (tomllib on Python >= 3.11, else tomli)."""
    path = Path(path)
    if not path.is_file():
        raise AttrboundError(f"no grid file at {path}.")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise AttrboundError(f"{path} is not valid TOML ({exc}).") from None


def paths_of(grid: Grid) -> dict[str, str | None]:
    """The file paths a row's config keeps beside the identity (which holds their digests
    only, so that moving a file keeps the rows resumable): ``weights`` and ``data``."""
    return {key: None if getattr(grid, key) is None else str(getattr(grid, key))
            for key in ("weights", "data")}


def grid_from_config(config: dict[str, Any], device: str = "cpu") -> Grid:
    """The grid that wrote rows whose ``config`` is given (its identity plus the paths of
    :func:`paths_of` and ``model``), on ``device``; used to rebuild the model and inputs
    of written rows (the report's gallery)."""
    names = {f.name for f in dataclasses.fields(Grid)}
    values = {k: v for k, v in config.items() if k in names}
    if values.get("data") is not None:  # the rows' dataset then names the data file
        values.pop("dataset", None)
    values["device"] = device
    return Grid.from_dict(values)


def config_id(identity: dict[str, Any]) -> str:
    """A short digest of an identity dict (16 hex digits of its canonical JSON's SHA-256)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
