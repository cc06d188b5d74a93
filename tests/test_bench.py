"""Grids, reports and the papers' analyses, end to end on a tiny real grid; a killed grid resumes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from robust_distill.analysis.bench import expand_grid, load_grid, run_grid
from robust_distill.analysis.report import build_report, spearman
from robust_distill.analysis.specialization import normalized_correlation, specialization
from robust_distill.analysis.unlearnable import teacher_scores, unlearnable_sets
from robust_distill.cli import main
from robust_distill.errors import ConfigError
from robust_distill.files.checkpoint import load_checkpoint

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def fmnist_base() -> dict:
    return {
        "method": "pgd_at", "device": "cpu", "channels_last": True,
        "data": {"dataset": "fashion_mnist", "val_size": 200, "train_subset": 256, "batch_size": 64,
                 "eval_batch_size": 200},
        "student": "timm:convnet_xs", "threat": {"eps": 0.1, "step_size": 0.05, "steps": 2},
        "optim": {"epochs": 2, "lr": 0.05, "schedule": {"key": "constant"}},
        "eval": {"n_examples": 100, "attacks": ["clean", "pgd20"], "select": "pgd20", "train_records": 128,
                 "final_attacks": ["clean", "fgsm", "pgd20"], "final_n_examples": 64},
    }


def write_grid(path: Path, grid: dict) -> Path:
    path.write_text(yaml.safe_dump(grid))
    return path


def test_grid_expansion_names_excludes_and_per_method(regs, tmp_path: Path) -> None:
    grid = {"output_dir": str(tmp_path / "g"), "base": fmnist_base(), "set": {"optim.epochs": 3},
            "grid": {"method": ["pgd_at", "rslad"], "seed": [0, 1], "threat.eps": [0.1, 0.2]},
            "exclude": [{"method": "pgd_at", "threat.eps": 0.2}],
            "per_method": {"rslad": {"teachers.robust": "timm:convnet_xs"}}}
    runs = expand_grid(grid)
    assert len(runs) == 6 and runs[0].name == "method=pgd_at,seed=0,eps=0.1"
    rslad = next(r for r in runs if r.raw["method"] == "rslad")
    assert rslad.raw["teachers"]["robust"] == "timm:convnet_xs"
    assert rslad.raw["output_dir"] == str(tmp_path / "g" / rslad.name)
    assert all(r.raw["optim"]["epochs"] == 3 for r in runs) and runs[-1].raw["threat"]["eps"] == 0.2
    assert "teachers" not in runs[0].raw or runs[0].raw["method"] != "pgd_at"
    bad = {**grid, "grid": {"method": ["pgd_at", "nope"]}, "exclude": []}
    with pytest.raises(ConfigError, match="method=nope: method: Unknown method 'nope'"):
        run_grid(bad, regs, dry_run=True)
    with pytest.raises(ConfigError, match="unknown grid key"):
        load_grid(write_grid(tmp_path / "x.yaml", {"gird": {}}))


def test_explicit_runs_beside_an_axis_of_the_same_key(tmp_path: Path) -> None:
    """``runs`` entries that share a key with the cartesian axes add their runs, and leave the grid file's axes as
    they were (checking once used to append the runs' values to the axes' own lists, so a grid read from a file
    expanded into duplicate runs)."""
    grid = load_grid(write_grid(tmp_path / "g.yaml", {
        "output_dir": str(tmp_path / "g"), "base": fmnist_base(),
        "grid": {"method": ["pgd_at", "trades"], "seed": [0, 1]},
        "exclude": [{"method": "trades", "seed": 1}],
        "runs": [{"method": "pgd_at", "seed": 2}, {"method": "trades", "outer_loss.kwargs.beta": 1.0, "seed": 0}]}))
    assert grid["grid"] == {"method": ["pgd_at", "trades"], "seed": [0, 1]}
    runs = expand_grid(grid)
    assert [r.name for r in runs] == ["method=pgd_at,seed=0", "method=pgd_at,seed=1", "method=trades,seed=0",
                                      "method=pgd_at,seed=2", "method=trades,beta=1,seed=0"]
    assert runs[-1].raw["outer_loss"]["kwargs"]["beta"] == 1.0 and "outer_loss" not in runs[2].raw


def test_finished_runs_are_not_validated_again(regs, tmp_path: Path) -> None:
    """A grid extended after its first runs finished (checkpoints are not committed, so a finished run's teacher may
    be gone) validates only the runs still to run."""
    spec = "checkpoint:{}/t{}.pt".format
    grid = {"output_dir": str(tmp_path / "g"), "base": fmnist_base(), "set": {"method": "rslad"},
            "grid": {"teachers.robust": [spec(tmp_path, 0), spec(tmp_path, 1)]}}
    old, new = expand_grid(grid)
    old.folder.mkdir(parents=True)
    (old.folder / "summary.json").write_text("{}")
    with pytest.raises(ConfigError) as exc:
        run_grid(grid, regs, dry_run=True)
    assert len(exc.value.problems) == 1 and "t1.pt' does not exist" in exc.value.problems[0]
    assert exc.value.problems[0].startswith(new.name)


def test_grid_names_tell_apart_checkpoints_of_the_same_file_name(tmp_path: Path) -> None:
    """Two runs' best.pt as values of one key: their folders' names tell them apart; other grids keep short names."""
    spec = "checkpoint:results/{}/seed={}/best.pt".format
    grid = {"output_dir": str(tmp_path / "g"), "base": fmnist_base(),
            "grid": {"teachers.robust": [spec("pgd_at", 0), spec("pgd_at", 1), spec("trades", 0)], "seed": [0]}}
    names = [r.name for r in expand_grid(grid)]
    # 'seed=0/best.pt' is shared by pgd_at and trades: one more parent folder is needed for all three
    assert names == ["robust=pgd_at_seed_0_best,seed=0", "robust=pgd_at_seed_1_best,seed=0",
                     "robust=trades_seed_0_best,seed=0"]
    grid["grid"]["teachers.robust"] = [spec("pgd_at", 0), "checkpoint:results/pgd_at/seed=0/last.pt"]
    assert [r.name for r in expand_grid(grid)] == ["robust=best,seed=0", "robust=last,seed=0"]  # as before
    grid["grid"]["teachers.robust"] = [spec("pgd_at", 0), spec("pgd_at", 0)]  # the same value twice: an error
    with pytest.raises(ConfigError, match="both named 'robust=best,seed=0'"):
        expand_grid(grid)


def test_spearman_and_entropy_of_known_distributions() -> None:
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 4], [1, 3, 2, 4]) == pytest.approx(0.9486833, abs=1e-6)
    images = torch.zeros(4, 1, 2, 2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 10))
    torch.nn.init.zeros_(model[1].weight), torch.nn.init.zeros_(model[1].bias)
    sets = {"indices_unlearnable": [0, 1], "indices_learnable": [2, 3]}
    rows = teacher_scores({"uniform": model}, images, torch.tensor([0, 1, 2, 3]), sets)
    assert rows[0]["unlearnable"]["entropy"] == pytest.approx(math.log(10), abs=1e-6)
    assert rows[0]["learnable"]["confidence"] == pytest.approx(0.1, abs=1e-6)


def test_convnet_shape_can_be_set_through_student_kwargs(regs) -> None:
    """``student.kwargs.widths`` (and depth, stem_stride) override a convnet variant's shape: convnet_m's own
    widths are 32, 64, 128; before the fix its builder took ``widths`` twice and refused the run."""
    from robust_distill.core.components import DatasetInfo
    from robust_distill.engine.run import build_student

    info = DatasetInfo("d", 10, (1, 28, 28))
    default = build_student("timm:convnet_m", {}, info, regs)
    wide = build_student("timm:convnet_m", {"widths": [48, 96, 192], "depth": 1}, info, regs)
    convs = lambda m: [c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d)]  # noqa: E731
    assert convs(default) == [32, 32, 64, 64, 128, 128]
    assert convs(wide) == [48, 96, 192]
    assert wide(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_normalized_correlation_of_a_model_with_itself_is_one(regs) -> None:
    from robust_distill.core.components import DatasetInfo
    from robust_distill.engine.run import build_student

    torch.manual_seed(0)
    model = build_student("timm:convnet_xs", {}, DatasetInfo("d", 10, (3, 16, 16)), regs)
    x = torch.rand(64, 3, 16, 16)
    stats = specialization(model, model, [("features.0", "features.0"), ("features.5", "features.5")], x)
    for s in stats:
        assert s.bnc == pytest.approx([1.0] * len(s.bnc), abs=1e-6) and s.mbnc == pytest.approx(1.0, abs=1e-6)
        assert s.unspecialized == 0 and s.specialized == len(s.bnc)
    a = torch.randn(500, 3)
    rho = normalized_correlation(torch.cat([a, -a[:, :1]], 1), a)  # a negated copy correlates -1
    assert rho[3, 0] == pytest.approx(-1.0) and rho[0, 0] == pytest.approx(1.0)


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_tiny_real_grid_end_to_end(regs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = write_grid(tmp_path / "grid.yaml", {
        "output_dir": str(tmp_path / "grid"), "base": fmnist_base(),
        "grid": {"method": ["pgd_at", "trades"], "seed": [0, 1]}})
    assert main(["bench", str(grid)]) == 0
    runs = sorted(p for p in (tmp_path / "grid").iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["method=pgd_at,seed=0", "method=pgd_at,seed=1",
                                      "method=trades,seed=0", "method=trades,seed=1"]
    assert all(json.loads((r / "status.json").read_text())["state"] == "done" for r in runs)

    # report: one row per method, mean ± std over the 2 seeds, best and last, plots
    capsys.readouterr()
    assert main(["report", str(tmp_path / "grid")]) == 0
    md = (tmp_path / "grid" / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| pgd_at") or line.startswith("| trades")]
    assert len(rows) == 2 and all("±" in r and "| 2 |" in r for r in rows)
    assert "PGD-20 (best)" in md and "PGD-20 (last)" in md and "FGSM (best)" in md
    for png in ("curves.png", "clean_vs_robust.png"):
        assert (tmp_path / "grid" / png).stat().st_size > 1000
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert f",{summary['final']['best']['pgd20']}," in (tmp_path / "grid" / "runs.csv").read_text()

    # unlearnable: S_U are the recorded samples wrong in every run at its peak epoch
    out = tmp_path / "su.json"
    assert main(["unlearnable", *map(str, runs), "--out", str(out)]) == 0
    sets = json.loads(out.read_text())
    records = [load_checkpoint(r / "train_records.pt") for r in runs]
    peaks = [json.loads((r / "summary.json").read_text())["best_epoch"] for r in runs]
    correct = torch.stack([rec["records"][str(e)] for rec, e in zip(records, peaks, strict=True)])
    assert sets["indices_unlearnable"] == records[0]["indices"][~correct.any(0)].tolist()
    assert sets["indices_learnable"] == records[0]["indices"][correct.all(0)].tolist()
    assert sets["size_unlearnable"] + sets["size_learnable"] <= 128 and sets["data"]["dataset"] == "fashion_mnist"
    assert sets == {**unlearnable_sets(runs), "data": sets["data"]}

    # teacher-score: one forward pass per teacher, ranked by entropy on S_U
    scores = tmp_path / "scores.json"
    teachers = [str(runs[0]), f"checkpoint:{runs[2] / 'last.pt'}"]
    assert main(["teacher-score", "--teachers", *teachers, "--unlearnable", str(out), "--out", str(scores),
                 "--device", "cpu"]) == 0
    ranked = json.loads(scores.read_text())["teachers"]
    assert [r["rank"] for r in ranked] == [1, 2]
    assert ranked[0]["unlearnable"]["entropy"] >= ranked[1]["unlearnable"]["entropy"]
    assert "entropy on S_U (nats)" in capsys.readouterr().out

    # a second grid distils from those two teachers; the report correlates entropy and robustness
    base = fmnist_base()
    base.update(method="rslad", eval={**base["eval"], "train_records": 0})
    grid2 = write_grid(tmp_path / "grid2.yaml", {
        "output_dir": str(tmp_path / "grid2"), "base": base,
        "grid": {"teachers.robust": [f"checkpoint:{runs[0] / 'best.pt'}", f"checkpoint:{runs[2] / 'last.pt'}"],
                 "seed": [0]}})
    assert main(["bench", str(grid2)]) == 0
    result = build_report(tmp_path / "grid2", teacher_scores=json.loads(scores.read_text()))
    assert "Spearman" in result["markdown"] and len(result["correlation"]["results"]) == 1
    corr = result["correlation"]["results"][0]
    expected = {t["teacher"]: t["unlearnable"]["entropy"] for t in ranked}
    assert corr["entropy_su"] == [expected[t] for t in corr["teachers"]]
    rho = spearman(corr["entropy_su"], corr["student_best"])
    assert corr["spearman_best"] == rho or (math.isnan(rho) and math.isnan(corr["spearman_best"]))

    # specialization between two trained runs, clean and adversarial
    spec = tmp_path / "spec"
    assert main(["specialization", "--teacher", str(runs[0]), "--student", str(runs[1]), "--layers",
                 "features.0=features.0,features.3=features.3", "--n-examples", "64", "--out", str(spec),
                 "--adversarial", "--device", "cpu"]) == 0
    data = json.loads((spec / "specialization.json").read_text())
    assert len(data["layers"]) == 2 and all(-1 <= v <= 1 + 1e-9 for v in data["layers"][0]["bnc"])
    assert (spec / "sorted_bnc.png").stat().st_size > 1000


@pytest.mark.slow
def test_a_killed_grid_resumes_without_redoing_finished_runs(regs, tiny_raw, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    base = tiny_raw("pgd_at")
    base["optim"]["epochs"] = 5
    base["data"]["options"]["n_train"] = 384
    base.pop("output_dir")
    grid = write_grid(tmp_path / "grid.yaml", {"output_dir": str(tmp_path / "g"), "base": base,
                                               "grid": {"seed": [0, 1]}})
    env = {**os.environ, "RD_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "robust_distill", "bench", str(grid)], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first, second = tmp_path / "g" / "seed=0", tmp_path / "g" / "seed=1"
    deadline = time.time() + 900  # an upper bound: the loop ends when the second run has a last.pt
    while time.time() < deadline and not (second / "last.pt").is_file():
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the bench process and its training child die at once
    proc.wait()
    assert (first / "summary.json").is_file() and not (second / "summary.json").is_file()
    done_at = (first / "summary.json").stat().st_mtime
    interrupted_at = load_checkpoint(second / "last.pt")["epoch"]
    assert 1 <= interrupted_at < 5
    monkeypatch.setenv("RD_PROGRESS", "lines")  # as in a CI log: progress lines, here one per event
    monkeypatch.setenv("RD_PROGRESS_DELAY", "0")
    states = run_grid(load_grid(grid), regs)
    assert states == {"seed=0": "done", "seed=1": "done"}
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"grid {tmp_path / 'g'} ")]
    assert progress and progress[-1].startswith(f"grid {tmp_path / 'g'}  100% run 1/1  done=1 failed=0 running=0")
    assert (first / "summary.json").stat().st_mtime == done_at  # not redone
    rows = [json.loads(r) for r in (second / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(5))  # resumed: every epoch once
    log = (second / "train.log").read_text()
    assert log.count("epoch 1/5 train_loss") == 1  # epoch 1 was not trained again after the kill


