"""The Ray executor: the same rows as the serial one, worker deaths retried then reported,
kill -9 of the driver resumed by the same command. Skipped when Ray is not installed.

One local Ray instance (2 CPUs, loopback only) serves the whole module; the CLI test starts
its own, as a user's command does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.processes import kill_after_rows

from attrbound import campaign, models
from attrbound.attacks import attack as library_attack
from attrbound.campaign import Grid
from attrbound.errors import AttrboundError

ray = pytest.importorskip("ray")

from attrbound.campaign.ray_executor import RayExecutor, tensors_sha256  # noqa: E402

pytestmark = pytest.mark.ray

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def ray_session():
    # functions defined in this module travel by value: the workers need not import it
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny untrained softplus MLP saved as a checkpoint naming mnist."""
    torch.manual_seed(0)
    model = models.mlp((1, 28, 28), 10, hidden=(8,))
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    models.save(model, path, {"arch": "mlp", "input_shape": [1, 28, 28], "hidden": [8],
                              "dataset": "mnist"})
    return path


def small_grid(model: Path, **kw) -> Grid:
    opts = dict(model=str(model), n=12, batch_size=4, attributions=("saliency",),
                norms=("2", "inf"), eps=(0.1,), bounds=("taylor", "region"),
                attacks=("pgd", "random"), steps=3, samples=8)
    opts.update(kw)
    return Grid(**opts)


def stripped(rows):
    return sorted((campaign.without_timings(r) for r in rows), key=campaign.row_key)


class DyingAttack:
    """attrbound.attack, except that the worker process dies (os._exit) in the unit with
    seed ``once`` the first time (a marker file remembers it) and in the unit with seed
    ``always`` every time."""

    def __init__(self, marker: Path, once: int, always: int) -> None:
        self.marker, self.once, self.always = str(marker), once, always

    def __call__(self, model, x, **kw):
        if kw["seed"] == self.always:
            os._exit(1)
        if kw["seed"] == self.once and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)
        return library_attack(model, x, **kw)


def test_ray_rows_equal_serial(ray_session, tiny, tmp_path):
    grid = small_grid(tiny)
    serial = campaign.run_campaign(grid, tmp_path / "serial.jsonl", progress=False)
    executor = RayExecutor(2, threads_per_worker=torch.get_num_threads())
    rows = campaign.run_campaign(grid, tmp_path / "ray.jsonl", progress=False,
                                 executor=executor)
    assert len(rows) == len(serial) == 12 * 2
    assert stripped(rows) == stripped(serial)
    assert ray.is_initialized()  # the caller's session is left running
    for a, b in zip(sorted(serial, key=campaign.row_key), sorted(rows, key=campaign.row_key),
                    strict=True):
        assert torch.equal(campaign.load_adv(tmp_path / "serial.jsonl", a["adv"]),
                           campaign.load_adv(tmp_path / "ray.jsonl", b["adv"]))


def test_worker_death_retried_then_reported(ray_session, tiny, tmp_path):
    grid = small_grid(tiny, norms=("2",))  # units with seeds 0, 4, 8
    serial = campaign.run_campaign(grid, tmp_path / "serial.jsonl", progress=False)
    executor = RayExecutor(2, threads_per_worker=torch.get_num_threads(), retries=1)
    rows = campaign.run_campaign(
        grid, tmp_path / "ray.jsonl", progress=False, executor=executor,
        attack_fn=DyingAttack(tmp_path / "died-once", once=4, always=8))
    assert len(rows) == 12 and len({campaign.row_key(r) for r in rows}) == 12
    failed = [r for r in rows if "failed" in r]
    assert sorted(r["index"] for r in failed) == [8, 9, 10, 11]
    assert [(u.start, u.stop) for u in executor.failed] == [(8, 12)]
    assert all("worker died 2 times" in r["failed"] for r in failed)
    assert all(r["attacks"]["pgd"]["error"] == r["failed"] for r in failed)
    assert all(r["bounds"]["region"]["error"] == r["failed"] for r in failed)
    # the unit that died once was retried and gives the serial rows
    assert stripped([r for r in rows if "failed" not in r]) == stripped(serial[:8])
    summary = campaign.summarize(rows)
    assert summary[0]["bounds"]["region"]["errors"] == 4


def test_worker_refuses_another_model(ray_session, tiny, tmp_path):
    other = tmp_path / "other.safetensors"
    torch.manual_seed(1)
    models.save(models.mlp((1, 28, 28), 10, hidden=(8,)), other,
                {"arch": "mlp", "input_shape": [1, 28, 28], "hidden": [8], "dataset": "mnist"})
    grid = small_grid(tiny, n=4)
    with pytest.raises(AttrboundError, match="other parameters"):
        campaign.run_campaign(grid, tmp_path / "rows.jsonl", progress=False,
                              model=models.load(other), executor=RayExecutor(2))
    images = torch.zeros(20, 1, 28, 28)
    assert tensors_sha256(images) != tensors_sha256(images[:10])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from attrbound.cli import main; sys.exit(main())",
            *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.pop("RAY_ADDRESS", None)
    return env


def test_cli_ray_resume_after_sigkill(tiny, tmp_path):
    """kill -9 of a driver running Ray workers, then the same command: the serial rows, each
    once."""
    common = ["evaluate", "--model", str(tiny), "--n", "40", "--batch-size", "4",
              "--norm", "2,inf", "--eps", "0.1", "--bound", "taylor,region", "--attack",
              "pgd,random", "--steps", "30", "--samples", "30", "--no-progress"]
    ray_opts = ["--executor", "ray", "--workers", "2", "--threads-per-worker", "1"]
    out, ref = tmp_path / "rows.jsonl", tmp_path / "ref.jsonl"
    proc = kill_after_rows(_cli(*common, *ray_opts, "--out", str(out)), _env(), out, rows=8,
                           timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed = campaign.read_rows(out)
    assert 8 <= len(killed) < 80, "the run was not interrupted part way"
    done = subprocess.run(_cli(*common, *ray_opts, "--out", str(out)), env=_env(),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    subprocess.run(_cli(*common, "--out", str(ref)), env=_env(), check=True,
                   capture_output=True)
    rows, expected = campaign.read_rows(out), campaign.read_rows(ref)
    assert len(rows) == len(expected) == 80
    assert len({campaign.row_key(r) for r in rows}) == 80
    assert stripped(rows) == stripped(expected)
    assert out.read_bytes().endswith(b"\n")


def test_cli_executor_flags(tiny, tmp_path):
    from attrbound.cli import main

    base = ["evaluate", "--model", str(tiny), "--n", "2", "--out", str(tmp_path / "r.jsonl")]
    assert main([*base, "--workers", "2"]) == 2  # needs --executor ray
    assert main([*base, "--device", "cuda:7" if torch.cuda.is_available() else "cuda"]) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_campaign_agrees_with_cpu(tiny, tmp_path):
    """The same grid on the GPU: the same keys and draws, figures equal up to rounding."""
    grid = small_grid(tiny, n=4, norms=("inf",))
    cpu = campaign.run_campaign(grid, tmp_path / "cpu.jsonl", progress=False)
    gpu = campaign.run_campaign(small_grid(tiny, n=4, norms=("inf",), device="cuda"),
                                tmp_path / "gpu.jsonl", progress=False)
    assert [campaign.row_key(r) for r in gpu] == [campaign.row_key(r) for r in cpu]
    for a, b in zip(cpu, gpu, strict=True):
        assert b["bounds"]["region"]["euclidean"] == pytest.approx(
            a["bounds"]["region"]["euclidean"], rel=1e-3)
        assert not any(v for flags in b["violated"].values() for v in flags.values())
