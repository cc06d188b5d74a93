"""Concurrent evaluation chunks (``evaluate_set(concurrency=K)``, ``eval.concurrency``, ``--concurrency``):
AutoAttack's chunks attacked by K worker processes give, bit for bit, the per-example results of attacking
them one after the other in one process, each right after ``torch.manual_seed(chunk_seed(seed, k))``."""

from __future__ import annotations

import argparse
import sys
import types

import pytest
import torch
from torch import nn

from robust_distill import EvalAttack
from robust_distill.cli.eval import concurrency
from robust_distill.data.memory import to_float
from robust_distill.engine import evaluation
from robust_distill.engine.evaluation import check_concurrency, chunk_seed, evaluate, worker_bytes
from robust_distill.errors import AttackContractError

from . import sharded_eval_worker as worker

SEED = 3


class SpyWorkers(evaluation.ChunkWorkers):
    """The real workers, recording how many there were and which chunks came back from them."""

    started: list[SpyWorkers] = []

    def __init__(self, *args, **kwargs) -> None:
        self.done: list[tuple[str, int]] = []
        self.processes: list = []
        SpyWorkers.started.append(self)
        super().__init__(*args, **kwargs)

    def close(self, failed: bool = False) -> None:
        self.processes = list(self.pool._processes.values())
        super().close(failed)

    def chunks(self, name, data, size, mine):
        for k, chunk in super().chunks(name, data, size, mine):
            self.done.append((name, k))
            yield k, chunk


@pytest.fixture
def spy(monkeypatch) -> type[SpyWorkers]:
    SpyWorkers.started = []
    monkeypatch.setattr(evaluation, "ChunkWorkers", SpyWorkers)
    return SpyWorkers


@pytest.mark.slow
def test_two_workers_give_the_bits_of_one_chunk_at_a_time(regs, spy) -> None:
    """AutoAttack standard (its four stages draw from the global RNG) on 20 examples in chunks of 7: 3 chunks
    for 2 workers, so a worker attacks two chunks one after the other (its first chunk must not leak into
    its second: each is seeded from its index)."""
    model, x, y, attacks = worker.setup()
    attacks = {"autoattack": regs.eval_attacks.build("autoattack", {"batch_size": 7}, eps=worker.EPS, num_classes=4),
               "pgd20": attacks["pgd20"]}  # batch chunks: attacked in this process, after AutoAttack's
    alone = evaluate(model, x, y, attacks, batch_size=6, seed=SEED, concurrency=1)
    assert spy.started == []
    concurrent = evaluate(model, x, y, attacks, batch_size=6, seed=SEED, concurrency=2)
    (workers,) = spy.started
    assert workers.n == 2 and sorted(workers.done) == [("autoattack", k) for k in range(3)]
    assert len(workers.processes) == 2 and all(not p.is_alive() for p in workers.processes)
    for name in attacks:
        assert torch.equal(concurrent.correct[name], alone.correct[name]), name
        assert concurrent.accuracy[name] == alone.accuracy[name]
    assert 0 < alone.accuracy["autoattack"] < alone.accuracy["pgd20"] < 1  # AutoAttack breaks some points, not all


def test_one_chunk_at_a_time_is_each_chunk_attacked_alone_after_seeding_from_its_index(regs) -> None:
    """What the workers must reproduce, written out (the APGD stages: seconds)."""
    model, x, y, _ = worker.setup()
    attack = regs.eval_attacks.build("autoattack_apgd", {"batch_size": 7}, eps=worker.EPS, num_classes=4)
    alone = evaluate(model, x, y, {"aa": attack}, seed=SEED, concurrency=1).correct["aa"]
    by_hand = []
    with torch.random.fork_rng():
        for k, start in enumerate(range(0, len(x), 7)):
            torch.manual_seed(chunk_seed(SEED, k))
            xb, yb = to_float(x[start:start + 7], "cpu"), y[start:start + 7]
            with torch.no_grad():
                by_hand.append(model(attack(model, xb, yb)).argmax(1) == yb)
    assert torch.equal(alone, torch.cat(by_hand)) and 0 < alone.float().mean() < 1


class OutOfBall(EvalAttack):
    """Breaks the evaluation contract: steps 2 eps away."""

    name, eps, chunk_size = "out_of_ball", 0.1, 2

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x + 2 * self.eps).clamp(0, 1)


@pytest.mark.slow
def test_an_error_in_a_worker_reaches_the_caller_and_stops_the_workers(spy) -> None:
    model, x, y, _ = worker.setup()
    with pytest.raises(AttackContractError, match="left the eps=0.1 ball"):
        evaluate(model, x[:4], y[:4], {"out_of_ball": OutOfBall()}, concurrency=2)
    (workers,) = spy.started
    assert all(not p.is_alive() for p in workers.processes)


@pytest.mark.slow
def test_a_model_class_the_workers_cannot_import_is_refused_before_any_chunk(regs, spy, monkeypatch) -> None:
    """As a class defined in a notebook: picklable here, not importable in a spawned worker."""
    _, x, y, _ = worker.setup()
    here = types.ModuleType("rd_module_of_this_process_only")
    here.Linear = type("Linear", (nn.Linear,), {"__module__": here.__name__})
    monkeypatch.setitem(sys.modules, here.__name__, here)
    model = nn.Sequential(nn.Flatten(), here.Linear(48, 4))
    attacks = {"autoattack_apgd": regs.eval_attacks.build("autoattack_apgd", {"batch_size": 10}, eps=worker.EPS,
                                                          num_classes=4)}
    with pytest.raises(ValueError, match=r"but a worker cannot load them \(ModuleNotFoundError: No module named "
                                         r"'rd_module_of_this_process_only'\).*Use concurrency 1"):
        evaluate(model, x, y, attacks, concurrency=2)
    (workers,) = spy.started
    assert workers.done == [] and all(not p.is_alive() for p in workers.processes)


class Unpicklable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(48, 4)
        self.scale = lambda t: 2 * t  # a lambda: pickle cannot copy this model into a worker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(self.linear(x.flatten(1)))


def test_a_model_workers_cannot_load_is_refused_with_the_reason_or_under_auto_evaluated_here(
        regs, monkeypatch) -> None:
    _, x, y, _ = worker.setup()
    model = Unpicklable()
    attacks = {"autoattack_apgd": regs.eval_attacks.build("autoattack_apgd", {"batch_size": 10}, eps=worker.EPS,
                                                          num_classes=4)}
    with pytest.raises(ValueError, match=r"concurrency 2 needs the model and the attacks \(autoattack_apgd\) in "
                                         r"worker processes.*cannot be pickled.*lambda.*Use concurrency 1"):
        evaluate(model, x, y, attacks, concurrency=2)
    monkeypatch.setattr(evaluation, "auto_concurrency", lambda *args: 2)  # as on a GPU
    with pytest.warns(RuntimeWarning, match="Evaluating one chunk at a time"):
        auto = evaluate(model, x, y, attacks, seed=SEED)
    assert torch.equal(auto.correct["autoattack_apgd"], evaluate(model, x, y, attacks, seed=SEED,
                                                                 concurrency=1).correct["autoattack_apgd"])


def test_a_compiled_model_is_not_copied_into_workers_that_would_run_it_eagerly(regs) -> None:
    """A pickled copy of a compiled module runs eagerly (other rounding): refused, and never started."""
    model, x, y, _ = worker.setup()
    model.compile()  # marks the module compiled; nothing is compiled before its first call
    attacks = {"autoattack_apgd": regs.eval_attacks.build("autoattack_apgd", {"batch_size": 10}, eps=worker.EPS,
                                                          num_classes=4)}
    with pytest.raises(ValueError, match=r"the model is compiled \(optim.compile\).*runs eagerly.*concurrency 1"):
        evaluate(model, x, y, attacks, concurrency=2)


def test_concurrency_is_auto_or_a_positive_integer_in_the_api_the_config_and_the_cli(tiny_config) -> None:
    from robust_distill.errors import ConfigError

    assert check_concurrency("auto") == "auto" and check_concurrency(3) == 3
    for bad in (0, -1, True, 2.5, "many"):
        with pytest.raises(ValueError, match="must be 'auto' or an integer >= 1"):
            check_concurrency(bad)
    assert tiny_config().eval.concurrency == "auto"
    assert tiny_config(overrides=["eval.concurrency=4"]).eval.concurrency == 4
    with pytest.raises(ConfigError, match=r"eval.concurrency must be 'auto' or an integer >= 1 .* got 0"):
        tiny_config(overrides=["eval.concurrency=0"])
    assert concurrency("auto") == "auto" and concurrency("2") == 2
    with pytest.raises(argparse.ArgumentTypeError, match="expected 'auto' or an integer >= 1, got '0'"):
        concurrency("0")


def test_a_worker_needs_its_overhead_the_weights_and_twice_the_saved_activations() -> None:
    """Flatten -> Linear(12, 5) -> ReLU -> Linear(5, 3) on 4 images of 3x2x2, float32: the weights are
    (12*5 + 5 + 5*3 + 3) * 4 = 332 bytes; the forward saves the flattened input (a view of x: 4*12*4 = 192
    bytes) and the ReLU's output (saved by the ReLU and by the next Linear, counted once: 4*5*4 = 80)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3))
    assert worker_bytes(model, torch.rand(4, 3, 2, 2)) == evaluation.WORKER_OVERHEAD_BYTES + 332 + 2 * (192 + 80)
    assert evaluation.auto_concurrency(model, torch.rand(4, 3, 2, 2), torch.device("cpu")) == 1  # CPU: one at a time


@pytest.mark.cuda
@pytest.mark.slow
def test_auto_concurrency_on_cuda_gives_the_bits_of_one_chunk_at_a_time(regs, spy) -> None:
    model, x, y, _ = worker.setup()
    model = model.cuda()
    attacks = {"autoattack": regs.eval_attacks.build("autoattack", {"batch_size": 5}, eps=worker.EPS,
                                                     num_classes=4)}
    alone = evaluate(model, x, y, attacks, seed=SEED, device="cuda", concurrency=1).correct["autoattack"]
    auto = evaluate(model, x, y, attacks, seed=SEED, device="cuda").correct["autoattack"]
    (workers,) = spy.started
    assert workers.n > 1 and torch.equal(auto, alone)


def test_training_and_the_eval_command_pass_the_concurrency_on(tiny_config, tmp_path, monkeypatch) -> None:
    from robust_distill import api
    from robust_distill.cli import main
    from robust_distill.engine import run, trainer

    seen = []
    evaluate_set = evaluation.evaluate_set

    def spy(*args, **kwargs):
        seen.append(kwargs["concurrency"])
        return evaluate_set(*args, **kwargs)

    monkeypatch.setattr(run, "evaluate_set", spy)  # what Run.evaluate (each epoch's and the final evaluation) calls
    monkeypatch.setattr(api, "evaluate_set", spy)  # what robust_distill.api.evaluate (the eval command) calls
    cfg = tiny_config(overrides=["optim.epochs=1", f"output_dir={tmp_path / 'run'}", "eval.concurrency=3",
                                 "eval.final_attacks=[clean]"])
    trainer.train(cfg)
    assert seen == [3, 3]  # the epoch's evaluation and the final one
    assert main(["eval", str(tmp_path / "run" / "last.pt"), "--attacks", "clean", "--n-examples", "4",
                 "--concurrency", "2"]) == 0
    assert main(["eval", str(tmp_path / "run" / "last.pt"), "--attacks", "clean", "--n-examples", "4"]) == 0
    assert seen[2:] == [2, "auto"]
