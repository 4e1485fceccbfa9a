"""training/distributed.py: what the ranks of a torchrun job do together, on CPU over gloo.

Real 2-process gloo groups (torch.multiprocessing, spawned) stand in for NCCL; what only a GPU
has is faked. Data preparation is tested in threads: it must work before any process group exists.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

import data.prepare as prepare_module
from data.prepare import PrepareOptions, dataset_dir, prepare_exclusively
from runtime.errors import DataError
from training.distributed import Dist, ddp_kwargs, prepare_data

POEM = "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n" * 20


# ---------------------------------------------------------------------------- data, before any process group


@pytest.fixture
def no_collectives(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any collective (or joining a group) fails the test: preparing must not need one."""
    def refuse(*_a, **_k):
        raise AssertionError("a collective was used while preparing data")

    for name in ("init_process_group", "barrier", "all_reduce", "broadcast", "all_gather_object"):
        monkeypatch.setattr(torch.distributed, name, refuse)


def poem_options(tmp_path: Path) -> PrepareOptions:
    text = tmp_path / "poem.txt"
    text.write_text(POEM, encoding="utf-8")
    return PrepareOptions(dataset="poem", input=str(text), data_dir=str(tmp_path / "data"))


def test_one_process_prepares_while_the_other_waits_without_a_collective(tmp_path: Path, no_collectives,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    opts = poem_options(tmp_path)
    real_build, builds = prepare_module._build, []

    def slow_build(*a, **k):  # FineWeb-Edu takes hours; a second is enough to make the other rank wait
        builds.append(threading.current_thread().name)
        time.sleep(1.0)
        real_build(*a, **k)

    monkeypatch.setattr(prepare_module, "_build", slow_build)
    results, said = {}, []

    def rank(r: int) -> None:
        results[r] = prepare_data(opts, Dist(rank=r, local_rank=r, world_size=2), poll=0.05, say=said.append)

    threads = [threading.Thread(target=rank, args=(r,), name=f"rank{r}") for r in (0, 1)]
    for t in threads:
        t.start()
        time.sleep(0.2)  # rank 0 takes the lock first
    for t in threads:
        t.join(timeout=60)
    assert builds == ["rank0"]  # one builder
    assert results[0] == results[1] == dataset_dir(opts) and (results[0] / "meta.json").is_file()
    assert len(said) == 1 and said[0].startswith("rank 1: waiting for another process to prepare")
    assert not list(results[0].parent.glob(".*.lock"))  # released
    assert not torch.distributed.is_initialized()


def test_a_lock_left_by_a_dead_builder_is_taken_over(tmp_path: Path) -> None:
    opts = poem_options(tmp_path)
    folder = dataset_dir(opts)
    folder.parent.mkdir(parents=True)
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)  # a pid that no longer runs
    (folder.parent / f".{folder.name}.lock").write_text(f"{socket.gethostname()} {dead}", encoding="utf-8")
    assert prepare_exclusively(opts, poll=0.01, timeout=30) == folder and (folder / "meta.json").is_file()


def test_a_live_lock_is_waited_for_then_gives_up_with_what_to_do(tmp_path: Path) -> None:
    opts = poem_options(tmp_path)
    folder = dataset_dir(opts)
    folder.parent.mkdir(parents=True)
    lock = folder.parent / f".{folder.name}.lock"
    lock.write_text(f"{socket.gethostname()} {os.getpid()}", encoding="utf-8")  # a builder that is alive
    with pytest.raises(DataError, match=f"waiting for another process to prepare .*delete {lock}"):
        prepare_exclusively(opts, poll=0.01, timeout=0.2)


# ---------------------------------------------------------------------------- wrapping


def test_ddp_options() -> None:
    assert ddp_kwargs("cuda", 3) == {"device_ids": [3], "broadcast_buffers": False, "gradient_as_bucket_view": True}
    assert ddp_kwargs("cpu", 1) == {"device_ids": None, "broadcast_buffers": False, "gradient_as_bucket_view": True}


def test_nccl_is_bound_to_the_ranks_gpu_and_flags_go_over_gloo(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA (faked: no NCCL here): init_process_group gets device_id, and a gloo group carries host flags."""
    import torch.distributed as tdist

    from training.distributed import init_process_group

    calls = []
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(tdist, "init_process_group", lambda **kw: calls.append(("init", kw)))
    monkeypatch.setattr(tdist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(tdist, "new_group", lambda **kw: calls.append(("group", kw["backend"])) or "gloo-group")
    dist = Dist(rank=5, local_rank=1, world_size=8)
    init_process_group(dist, "cuda:1")
    assert calls == [("init", {"backend": "nccl", "device_id": torch.device("cuda:1")}), ("group", "gloo")]
    assert dist.control == "gloo-group"
    init_process_group(Dist(), "cuda:0")  # one process: no group at all
    assert len(calls) == 2


# ---------------------------------------------------------------------------- two gloo processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, scenario: str, workdir: str) -> None:
    """One rank of a 2-process job: torchrun's environment, then a scenario; results go to a JSON file."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    result = globals()[f"_scenario_{scenario}"](rank, Path(workdir))
    with open(Path(workdir) / f"rank{rank}.json", "w", encoding="utf-8") as f:
        json.dump(result, f)


def run_ranks(tmp_path: Path, scenario: str, world: int = 2) -> list[dict]:
    (tmp_path / "poem.txt").write_text(POEM, encoding="utf-8")
    job = mp.start_processes(_rank_main, args=(world, free_port(), scenario, str(tmp_path)), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.time() + 180
    while not job.join(timeout=1):
        if time.time() > deadline:  # a hang is the failure some of these tests look for
            for p in job.processes:
                p.kill()
            pytest.fail(f"the ranks of scenario {scenario!r} hung")
    return [json.loads((tmp_path / f"rank{r}.json").read_text(encoding="utf-8")) for r in range(world)]


def _config(workdir: Path, *extra: str):
    from train import load_config

    return load_config([f"--input={workdir / 'poem.txt'}", "--dataset=poem", f"--data_dir={workdir / 'data'}",
                        f"--out_dir={workdir / 'out'}", "--n_layer=1", "--n_head=2", "--n_embd=16",
                        "--block_size=16", "--batch_size=4", "--eval_iters=1", "--sample_tokens=0", "--device=cpu",
                        "--dtype=float32", "--optimizer=adamw", "--compile=false", *extra])


def _collectives(rank: int, dist) -> dict:
    """The host-side collectives, inside a running job."""
    from training.control import TrainingDiverged
    from training.distributed import RankFailed, any_rank, gather_objects, mean_across_ranks, on_master

    out = {"any": any_rank(dist, rank == 1, False), "mean": mean_across_ranks(dist, [float(rank), 2.0]),
           "gathered": gather_objects(dist, {"rank": rank}), "value": on_master(dist, "work", lambda: "done")}

    def diverge():
        raise TrainingDiverged("val loss is nan")

    try:
        on_master(dist, "an eval", diverge)
    except TrainingDiverged as e:
        out["diverged"] = str(e)
    try:
        on_master(dist, "a save", lambda: 1 / 0)
    except (ZeroDivisionError, RankFailed) as e:
        out["failed"] = type(e).__name__
    return out


def _scenario_stop_and_seeds(rank: int, workdir: Path) -> dict:
    """A stop request on rank 1 only, at iteration 3, between log steps: both ranks stop at 3, saved."""
    from model.checkpoint import load_train_state
    from training.setup import set_up

    cfg = _config(workdir, "--max_iters=50", "--eval_interval=1000", "--log_interval=1000", "--dropout=0.5")
    stop = SimpleNamespace(requested=None)
    with set_up(cfg, log_to_console=False) as run:
        weights = float(sum(p.double().sum() for p in run.raw_model.parameters()))  # after init
        rng_after_setup = torch.get_rng_state().sum().item()
        mask = torch.nn.functional.dropout(torch.ones(64), 0.5).tolist()
        collectives = _collectives(rank, run.dist)
        run.eval_due() and run.evaluate_and_checkpoint()
        while run.iter_num < cfg.max_iters:
            run.step()
            if rank == 1 and run.iter_num == 3:
                stop.requested = "SIGTERM"
            if run.stop_requested(stop):
                break
        stopped_at, how = run.iter_num, run.stopped
    state = load_train_state(workdir / "out")
    return {"weights": weights, "rng": rng_after_setup, "mask": mask, "stopped_at": stopped_at, "how": how,
            "saved_iter": int(state["iter"]), "saved_ranks": len(state["rng_ranks"]), "collectives": collectives}


@pytest.fixture(scope="module")
def ranks_that_stopped(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """One 2-process training job (spawning costs seconds): a stop request on rank 1 only, at step 3."""
    return run_ranks(tmp_path_factory.mktemp("stop"), "stop_and_seeds")


def test_a_stop_on_one_rank_stops_all_at_that_step_and_ranks_draw_their_own_dropout(
        ranks_that_stopped: list[dict]) -> None:
    r0, r1 = ranks_that_stopped
    assert r0["stopped_at"] == r1["stopped_at"] == 3 and r0["how"] == r1["how"] == "signal"  # not at a log step
    assert r0["saved_iter"] == 3 and r0["saved_ranks"] == 2  # every rank's RNG is in the checkpoint
    assert r0["weights"] == r1["weights"]  # the same init everywhere
    assert r0["rng"] != r1["rng"] and r0["mask"] != r1["mask"]  # but each rank its own dropout masks


def _scenario_master_fails(rank: int, workdir: Path) -> dict:
    """Rank 0 fails while writing a checkpoint; rank 1 must not wait for it forever."""
    import train
    import training.checkpoints as checkpoints
    from training.distributed import RankFailed

    cfg = _config(workdir, "--max_iters=4", "--eval_interval=2", "--log_interval=1")
    if rank == 0:
        def disk_full(*_a, **_k):
            raise OSError("No space left on device")

        checkpoints.save_train_state = disk_full
    try:
        result = train.train(cfg, log_to_console=False)
    except OSError as e:
        return {"raised": "OSError", "message": str(e)}
    except RankFailed as e:
        return {"raised": "RankFailed", "message": str(e)}
    return {"raised": None, "result": str(result)}


def test_a_failure_on_rank_0_reaches_every_rank(tmp_path: Path) -> None:
    t0 = time.time()
    r0, r1 = run_ranks(tmp_path, "master_fails")
    assert r0 == {"raised": "OSError", "message": "No space left on device"}
    assert r1 == {"raised": "RankFailed", "message": "rank 0 failed during saving a checkpoint; "
                                                     "its error is in rank 0's output"}
    assert time.time() - t0 < 120  # no hang


def test_host_collectives_and_on_master(ranks_that_stopped: list[dict]) -> None:
    r0, r1 = (r["collectives"] for r in ranks_that_stopped)
    assert r0["any"] == r1["any"] == [True, False]
    assert r0["mean"] == r1["mean"] == [0.5, 2.0]
    assert r0["gathered"] == r1["gathered"] == [{"rank": 0}, {"rank": 1}]
    assert (r0["value"], r1["value"]) == ("done", None)
    assert (r0["diverged"], r1["diverged"]) == ("val loss is nan", "rank 0 stopped the run during an eval")
    assert (r0["failed"], r1["failed"]) == ("ZeroDivisionError", "RankFailed")


def test_ddp_is_wrapped_first_then_compiled(tmp_path) -> None:
    """PyTorch's documented order for DDP with torch.compile: DDP inside, compile outside (dynamo splits the
    graph at DDP's buckets). A real one-process gloo group; the wrapped model trains a step and its no_sync
    context (what gradient accumulation uses) is reachable through the compiled wrapper."""
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from model import GPT, GPTConfig
    from model.checkpoint import unwrap
    from training.distributed import Dist, gradient_sync
    from training.setup import wrap_model

    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        gpt = GPT(GPTConfig.classic(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=32))
        wrapped = wrap_model(gpt, Dist(world_size=2), use_compile=True, fsdp=False, device_type="cpu",
                             say=lambda _: None)
        assert isinstance(wrapped, torch._dynamo.eval_frame.OptimizedModule)
        assert isinstance(wrapped._orig_mod, DDP) and unwrap(wrapped) is gpt
        x = torch.randint(0, 32, (2, 8))
        with gradient_sync(wrapped, gpt, Dist(world_size=2), fsdp=False, sync=False):
            _, loss = wrapped(x, x)
            loss.backward()
        assert all(p.grad is not None for p in gpt.parameters() if p.requires_grad)
    finally:
        tdist.destroy_process_group()


# ---------------------------------------------------------------------------- resume without a shared filesystem

RESUME_RUN = ("--max_iters=6", "--eval_interval=3", "--log_interval=1", "--dropout=0.1", "--out_dir=out")


def _on_own_machine(rank: int, workdir: Path) -> None:
    """Each rank in its own working directory, so the relative --out_dir=out is a different folder on
    each: rank 0's holds the run, rank 1's never exists, as on a second machine without a shared disk."""
    home = workdir / f"node{rank}"
    home.mkdir(exist_ok=True)
    os.chdir(home)


def _scenario_resume_uninterrupted(rank: int, workdir: Path) -> dict:
    import train

    _on_own_machine(rank, workdir)
    return {"iters": train.train(_config(workdir, *RESUME_RUN), log_to_console=False)["iters"]}


def _scenario_resume_first_half(rank: int, workdir: Path) -> dict:
    import train

    _on_own_machine(rank, workdir)
    return {"iters": train.train(_config(workdir, *RESUME_RUN, "--max_iters=3"), log_to_console=False)["iters"]}


def _scenario_resume_second_half(rank: int, workdir: Path) -> dict:
    import train

    _on_own_machine(rank, workdir)
    cfg = _config(workdir, *RESUME_RUN, "--init_from=resume")  # the whole command line: rank 1 has no config.json
    return {"iters": train.train(cfg, log_to_console=False)["iters"]}


def _losses(out_dir: Path) -> list[tuple[int, float]]:
    with open(out_dir / "metrics.jsonl", encoding="utf-8") as f:
        return [(e["iter"], e["loss"]) for e in map(json.loads, f) if e["event"] == "log"]


def test_a_resume_reads_the_train_state_on_rank_0_only(tmp_path: Path) -> None:
    """2 DDP processes, with dropout (each rank its own RNG stream), stopped at 3 and resumed to 6, while
    only rank 0 can see the run folder: the same losses as the same job run through, and rank 1 held
    its own dropout stream (else its masks, and the losses, would differ)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    for folder in (straight, split):
        folder.mkdir()
    assert [r["iters"] for r in run_ranks(straight, "resume_uninterrupted")] == [6, 6]
    assert [r["iters"] for r in run_ranks(split, "resume_first_half")] == [3, 3]
    assert (split / "node0" / "out" / "train_state.pt").is_file()
    assert not (split / "node1" / "out" / "train_state.pt").exists()  # rank 1 cannot read it: it is not there
    assert [r["iters"] for r in run_ranks(split, "resume_second_half")] == [6, 6]
    assert not (split / "node1" / "out" / "train_state.pt").exists()
    expected = _losses(straight / "node0" / "out")
    assert [i for i, _ in expected] == list(range(1, 7))
    assert _losses(split / "node0" / "out") == expected


# ---------------------------------------------------------------------------- what each rank holds under --fsdp

FSDP_MODEL = ("--n_layer=2", "--n_head=2", "--n_embd=128", "--max_iters=1", "--eval_interval=1000")


def _memory_limit(workdir: Path) -> int:
    """Bytes between the pre-check's count for this model sharded over 2 processes and alone, for any
    vocabulary a char tokenizer of the poem can have (the check runs before and after the data)."""
    from training.config import scratch_config
    from training.memory import training_bytes

    cfg = _config(workdir, *FSDP_MODEL)
    sharded = max(training_bytes(scratch_config(cfg, v), cfg, 4, shards=2) for v in (1, 256))
    alone = min(training_bytes(scratch_config(cfg, v), cfg, 4) for v in (1, 256))
    assert sharded < alone
    return (sharded + alone) // 2


def _scenario_fsdp_share(rank: int, workdir: Path) -> dict:
    """Under a memory cap that only a sharded run fits: refused without --fsdp (one line, exit 2), and
    with it trains; then what this rank holds of the parameters and AdamW moments."""
    import contextlib
    import io

    import train
    from runtime.options import run_main
    from training.setup import set_up

    os.environ["QUILLGPT_MEMORY_LIMIT"] = str(_memory_limit(workdir))
    err = io.StringIO()
    argv = [f"--input={workdir / 'poem.txt'}", "--dataset=poem", f"--data_dir={workdir / 'data'}",
            f"--out_dir={workdir / 'alone'}", "--block_size=16", "--batch_size=4", "--eval_iters=1",
            "--sample_tokens=0", "--device=cpu", "--dtype=float32", "--optimizer=adamw", "--compile=false",
            *FSDP_MODEL]
    with contextlib.redirect_stderr(err):
        try:
            run_main(lambda: train.main(argv))
            code = 0
        except SystemExit as e:
            code = e.code
    with set_up(_config(workdir, *FSDP_MODEL, "--fsdp"), log_to_console=False) as run:
        run.step()  # AdamW's moments exist from the first step
        params = list(run.raw_model.parameters())
        moments = [v for o in run.optimizers for s in o.state.values() for v in s.values()
                   if isinstance(v, torch.Tensor) and v.dim() > 0]  # exp_avg, exp_avg_sq (not the step count)
        out = {"params_local": sum(p.to_local().numel() for p in params), "params": sum(p.numel() for p in params),
               "moments_local": sum(m.to_local().numel() for m in moments), "moments": sum(m.numel() for m in moments),
               "refused_code": code, "refused": err.getvalue()}
    return out


def test_fsdp_ranks_each_hold_half_and_only_the_sharded_run_passes_the_pre_check(tmp_path: Path) -> None:
    r0, r1 = run_ranks(tmp_path, "fsdp_share")
    for r in (r0, r1):  # without --fsdp, each rank would hold it all: refused before anything is built
        assert r["refused_code"] == 2, r["refused"]
        lines = r["refused"].strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "needs at least" in lines[0]
    assert r0["params"] == r1["params"] and r0["moments"] == r1["moments"] == 2 * r0["params"]
    assert r0["params_local"] + r1["params_local"] == r0["params"]  # every parameter on exactly one rank
    assert r0["moments_local"] + r1["moments_local"] == r0["moments"]
    for r in (r0, r1):
        assert 0.4 < r["params_local"] / r["params"] < 0.6 and 0.4 < r["moments_local"] / r["moments"] < 0.6
    assert not (tmp_path / "alone").exists()  # the refused run wrote nothing
