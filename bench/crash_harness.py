"""Kill training with SIGKILL at random moments, then check that nothing was lost.

    python -m bench.crash_harness                       # 24 kills, seed 0: the figures, in a few tens of seconds
    python -m bench.crash_harness --kills=200 --seed=3  # a longer soak

What a kill may do, and what is checked after every one (SQLite-style crash testing, with the
process dying at the worst moments on purpose):

- *where* it lands: at a random time (a SIGKILL from outside), or exactly at the k-th
  ``os.fsync``/``os.replace`` of an atomic write (fault injection inside the child: the process
  kills itself there), which puts kills inside checkpoints, the first one included.
- after each kill: the run folder loads in ``sample.py``, or ``sample.py`` says in one line that
  there is no checkpoint yet; ``metrics.jsonl``'s iterations never go backwards; the work lost
  (last logged iteration minus the train state's) is at most one save interval.
- then the documented command, ``python train.py --init_from=resume --out_dir=DIR``, continues
  the run; when the run never saved a checkpoint it refuses in one line, leaving no temp file of
  the killed run behind, and the run starts over with ``--overwrite`` as that line says.
- at the end of every chain of kills and resumes: the run finishes, no temp file is left, and its
  weights (latest and best/) and its metrics are bit-identical to a run that was never killed.

Children are forked from a small server process that has imported torch once, so a trial costs
the training it does, not an interpreter start; a real ``python train.py`` is still what runs in
each child (``train.main``), killed by a real SIGKILL. tests/test_crash_safety.py runs this.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POEM = ("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n"
        "Rough winds do shake the darling buds of May,\nAnd summer's lease hath all too short a date;\n") * 20
EVAL_INTERVAL = 4
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=8", "--eval_iters=2",
        "--sample_tokens=0", "--device=cpu", "--dtype=float32", "--log_interval=1", "--threads=1",
        "--warmup_iters=2", f"--eval_interval={EVAL_INTERVAL}"]
FIRST_CHECKPOINT_EVENTS = (16, 33)  # fsync/replace events of a fresh run's first save (see first_checkpoint_kill)


# ---------------------------------------------------------------------------- the fork server (child side)


def _child(request: dict[str, Any]) -> int:
    """In a forked child: redirect output, arm the I/O fault if asked, run the program's main()."""
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = os.fdopen(1, "w", buffering=1, encoding="utf-8", closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, encoding="utf-8", closefd=False)
    kill_at = request.get("kill_at_event")
    if kill_at:
        count = [0]

        def dies_at(real: Any) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                count[0] += 1
                if count[0] == kill_at:  # the process dies right here, before this fsync/rename happens
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(*args, **kwargs)
            return call

        os.fsync, os.replace = dies_at(os.fsync), dies_at(os.replace)
    import sample
    import train
    from runtime.options import run_main

    program = {"train": train.main, "sample": sample.main}[request["program"]]
    try:
        run_main(lambda: program(request["argv"]))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


def serve() -> None:
    """Read one JSON request per line; fork a child for it; answer its pid, then how it ended.

    A request may carry ``kill_after`` seconds: the server SIGKILLs the child then if it is still
    running. The server kills only its own unreaped children, so a pid can never be someone else's.
    """
    import io

    import torch
    from matplotlib.figure import Figure

    import sample  # noqa: F401
    import train  # noqa: F401
    import training.setup  # noqa: F401

    # what every child would otherwise pay for again: the optimizers' lazy imports, matplotlib's fonts
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    torch.optim.Muon([torch.nn.Parameter(torch.zeros(2, 2))])
    Figure().add_subplot().plot([0, 1]) and Figure().savefig(io.BytesIO(), format="png")

    out = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        out.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(request)
            finally:
                os._exit(code)
        start = time.monotonic()
        kill_at = start + request["kill_after"] if request.get("kill_after") else None
        give_up = start + request.get("timeout", 600)
        by_timer = timed_out = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            now = time.monotonic()
            if (kill_at is not None and now >= kill_at) or now >= give_up:
                os.kill(pid, signal.SIGKILL)  # still our unreaped child: the pid is certainly this one
                by_timer, timed_out = kill_at is not None and now >= kill_at, now >= give_up
                kill_at = give_up = float("inf")
            time.sleep(0.002)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
        out.write(json.dumps({"code": code, "killed": killed, "by_timer": by_timer, "timed_out": timed_out}) + "\n")
        out.flush()


# ---------------------------------------------------------------------------- the harness (parent side)


class Server:
    """The fork server process, started once per harness."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        repo = Path(__file__).resolve().parents[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.crash_harness", "--serve"], cwd=repo, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def run(self, program: str, argv: list[str], log: Path, kill_at_event: int | None = None,
            kill_after: float | None = None, timeout: float = 600) -> dict[str, Any]:
        """Run ``program``'s main(argv) in a forked child; how it ended: code, killed, by_timer, timed_out."""
        request = {"program": program, "argv": argv, "log": str(log), "kill_at_event": kill_at_event,
                   "kill_after": kill_after, "timeout": timeout}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()  # the server answers every request (it kills a child at `timeout`)
        if not line:
            raise RuntimeError("the fork server died")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


@dataclass
class Figures:
    """What a harness run measured (printed by main, asserted by the test)."""

    kills: int = 0
    kills_by_timer: int = 0
    kills_at_io: int = 0
    aimed_at_first_checkpoint: int = 0  # fresh runs killed at one of the I/O events of their first save
    first_checkpoint_incomplete: int = 0  # the folder showed part of a first checkpoint (or its temp file)
    mid_write: int = 0  # a temp file was left: the kill landed inside an atomic write
    sample_loaded: int = 0  # sample.py wrote text from the killed folder
    sample_not_yet: int = 0  # sample.py said in one line there is no checkpoint yet
    resumed: int = 0  # --init_from=resume continued the run
    started_over: int = 0  # no train state yet: the resume refused in one line, --overwrite started over
    chains: int = 0
    chains_identical: int = 0  # finished chains bit-identical to the never-killed run
    max_lost_iters: int = 0
    problems: list[str] = field(default_factory=list)


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a torn last line of a killed writer: the next run drops it
    return events


def comparable(events: list[dict[str, Any]]) -> list[tuple]:
    """The deterministic part of each event (not times or speeds)."""
    keys = ("event", "iter", "loss", "lr", "grad_norm", "tokens", "train_loss", "val_loss")
    return [tuple(e.get(k) for k in keys) for e in events]


def temp_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tmp"))


def tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def same_tensors(a: Path, b: Path) -> bool:
    import torch

    ta, tb = tensors(a), tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


class Harness:
    def __init__(self, root: Path, seed: int, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.figures = Figures()
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        (root / "poem.txt").write_text(POEM, encoding="utf-8")
        env = dict(env or os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        env.pop("QUILLGPT_DEBUG", None)
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
        self.server = Server(root, env)
        self.n = 0

    def base(self, max_iters: int) -> list[str]:
        return ["--dataset=poem", f"--input={self.root / 'poem.txt'}", f"--data_dir={self.root / 'data'}", *TINY,
                f"--max_iters={max_iters}"]

    def run(self, program: str, argv: list[str], **kill: Any) -> tuple[dict[str, Any], str]:
        self.n += 1
        log = self.logs / f"{self.n:03d}-{program}.log"
        result = self.server.run(program, argv, log, **kill)
        return result, log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""

    def problem(self, text: str) -> None:
        self.figures.problems.append(text)

    # ------------------------------------------------------------------ checks

    def check_after_kill(self, folder: Path) -> bool:
        """The invariants of a folder right after a kill; True if it can be resumed (it has a train state)."""
        f = self.figures
        import torch

        state_path = folder / "train_state.pt"
        has_state = state_path.is_file()
        temps = temp_files(folder)
        f.mid_write += bool(temps)
        # inside the first checkpoint: some of it is on disk (best/, a checkpoint file or its temp), not all of it
        parts = [n for n in ("best", "train_state.pt", "model.safetensors") if (folder / n).exists()]
        checkpoint_files = ("train_state.pt", "model.safetensors", "config.json")
        parts += [t for t in temps if any(f".{n}." in t for n in checkpoint_files)]
        f.first_checkpoint_incomplete += bool(parts) and not (folder / "config.json").is_file()
        result, out = self.run("sample", ["--out_dir", str(folder), "--max_new_tokens=4", "--seed=0", "--device=cpu"])
        lines = [ln for ln in out.splitlines() if ln.strip()]
        if result["code"] == 2:  # allowed: no checkpoint yet (or no folder yet), said in one line
            if not (len(lines) == 1 and lines[0].startswith("error: ")
                    and ("yet" in lines[0] or "run folder not found" in lines[0])):
                self.problem(f"{folder.name}: sample.py refused with {lines}")
            f.sample_not_yet += 1
        elif result["code"] != 0 or "Traceback" in out:
            self.problem(f"{folder.name}: sample.py failed ({result}): {out[-500:]}")
        else:
            f.sample_loaded += 1
        events = read_metrics(folder)
        iters = [e["iter"] for e in events if isinstance(e.get("iter"), int)]
        if iters != sorted(iters):
            self.problem(f"{folder.name}: metrics.jsonl iterations go backwards: {iters}")
        saved = int(torch.load(state_path, weights_only=True, mmap=True)["iter"]) if has_state else 0
        lost = max(iters, default=0) - saved
        f.max_lost_iters = max(f.max_lost_iters, lost)
        if lost > EVAL_INTERVAL:
            self.problem(f"{folder.name}: lost {lost} iterations (> one save interval of {EVAL_INTERVAL})")
        return has_state

    def check_refuses_resume(self, folder: Path) -> None:
        """A run that never saved: the documented resume command says so in one line (exit 2)."""
        result, out = self.run("train", ["--init_from=resume", f"--out_dir={folder}"])
        lines = [ln for ln in out.splitlines() if ln.strip()]
        reasons = ("before its first train state was saved", "does not exist", "no train_state.pt in")
        if result["code"] != 2 or len(lines) != 1 or not any(r in lines[0] for r in reasons):
            self.problem(f"{folder.name}: resume of a never-saved run gave {result['code']}: {lines}")
        if temp_files(folder):  # a refusal is a way out too: the killed run's temp files must not outlive it
            self.problem(f"{folder.name}: temp files left after the refused resume: {temp_files(folder)}")

    def check_finished(self, folder: Path, reference: Path) -> None:
        f = self.figures
        if temp_files(folder):
            self.problem(f"{folder.name}: temp files left after the run finished: {temp_files(folder)}")
        identical = comparable(read_metrics(folder)) == comparable(read_metrics(reference))
        for name in ("model.safetensors", "best/model.safetensors"):
            identical &= same_tensors(folder / name, reference / name)
        if identical:
            f.chains_identical += 1
        else:
            self.problem(f"{folder.name}: the finished run differs from the never-killed one")

    # ------------------------------------------------------------------ chains

    def random_kill(self) -> dict[str, Any]:
        """Half the time at a random moment, half at a random fsync/rename of an atomic write."""
        if self.rng.random() < 0.5:
            return {"kill_after": round(self.rng.uniform(0.05, 1.5), 3)}
        return {"kill_at_event": self.rng.randint(1, 45)}

    def first_checkpoint_kill(self) -> dict[str, Any]:
        """A fresh run's I/O events, three per file (fsync the temp file, rename it, fsync the folder): 1-3 its
        tokenizer, 4-9 loss.png and attention.png at iter 0, 10-15 both again at the first save's eval, then
        best/ (tokenizer, weights, config.json), model.safetensors, config.json and train_state.pt: 16-33 are
        the first checkpoint."""
        return {"kill_at_event": self.rng.randint(*FIRST_CHECKPOINT_EVENTS)}

    def chain(self, name: str, max_iters: int, reference: Path, kills: list[dict[str, Any]]) -> None:
        """A fresh run killed once per entry of ``kills``, resumed (or started over) after each, then finished."""
        f = self.figures
        folder = self.root / name
        fresh = [*self.base(max_iters), f"--out_dir={folder}"]
        argv, pending = fresh, list(kills)
        while True:
            kill = pending.pop(0) if pending else {}
            result, out = self.run("train", argv, **kill)
            if result["timed_out"]:
                self.problem(f"{name}: train.py hung: {out[-800:]}")
                return
            if not result["killed"]:
                break  # finished: no kill was planned, or the run ended before it came
            f.kills += 1
            f.kills_by_timer += result["by_timer"]
            f.kills_at_io += not result["by_timer"]
            if self.check_after_kill(folder):
                argv = ["--init_from=resume", f"--out_dir={folder}"]  # the documented command
                f.resumed += 1
            else:
                self.check_refuses_resume(folder)
                argv = [*fresh, "--overwrite"]  # what that refusal says to do
                f.started_over += 1
        if result["code"] != 0:
            self.problem(f"{name}: train.py exited {result['code']}: {out[-800:]}")
            return
        f.chains += 1
        self.check_finished(folder, reference)

    def reference(self, max_iters: int) -> Path:
        folder = self.root / f"reference-{max_iters}"
        result, out = self.run("train", [*self.base(max_iters), f"--out_dir={folder}"])
        if result["code"] != 0:
            raise RuntimeError(f"the reference run failed: {out[-2000:]}")
        return folder

    def soak(self, kills: int, first_checkpoint_trials: int) -> Figures:
        """``first_checkpoint_trials`` fresh runs killed inside their first checkpoint, then one long chain
        with the remaining kills at random moments; every chain checked against a never-killed run."""
        short, long = 2 * EVAL_INTERVAL, 6 * EVAL_INTERVAL
        ref_short, ref_long = self.reference(short), self.reference(long)
        for i in range(first_checkpoint_trials):
            self.figures.aimed_at_first_checkpoint += 1
            self.chain(f"first-{i}", short, ref_short, [self.first_checkpoint_kill()])
        remaining = max(0, kills - self.figures.kills)
        self.chain("long", long, ref_long, [self.random_kill() for _ in range(remaining)])
        while self.figures.kills < kills:  # the long run finished before every kill was spent
            self.chain(f"more-{self.figures.chains}", long, ref_long,
                       [self.random_kill() for _ in range(kills - self.figures.kills)])
        return self.figures

    def close(self) -> None:
        self.server.close()


def report(fig: Figures) -> str:
    """The figures in one paragraph."""
    return (f"{fig.kills} SIGKILLs ({fig.kills_by_timer} at random times, {fig.kills_at_io} at an fsync/rename); "
            f"{fig.aimed_at_first_checkpoint} inside a fresh run's first checkpoint, {fig.first_checkpoint_incomplete} "
            f"of which left it visibly incomplete; {fig.mid_write} left a temp file. After each kill sample.py wrote "
            f"text {fig.sample_loaded} times and said 'no checkpoint yet' in one line {fig.sample_not_yet} times; "
            f"--init_from=resume continued {fig.resumed} times, and {fig.started_over} times refused in one line "
            f"(no train state yet) so the run started over with --overwrite; at most {fig.max_lost_iters} "
            f"iterations lost (save interval {EVAL_INTERVAL}); {fig.chains_identical}/{fig.chains} finished runs "
            f"bit-identical (weights, best/, metrics.jsonl) to a never-killed run, with no temp file left; "
            f"{len(fig.problems)} problems")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=24, help="SIGKILLs in total (default 24)")
    p.add_argument("--first_checkpoint", type=int, default=6, help="of which: fresh runs killed in their first save")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=None, help="work folder (default: a new temp folder)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve()
        return 0
    import tempfile

    root = Path(args.dir or tempfile.mkdtemp(prefix="quillgpt-crash-"))
    t0 = time.time()
    harness = Harness(root, args.seed)
    try:
        fig = harness.soak(args.kills, args.first_checkpoint)
    finally:
        harness.close()
    print(report(fig) + f"; {time.time() - t0:.0f} s in {root}")
    for problem in fig.problems:
        print("PROBLEM:", problem)
    return 1 if fig.problems else 0


if __name__ == "__main__":
    sys.exit(main())
