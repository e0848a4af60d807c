"""Warm start: one process imports the libraries once, and every local job is forked from it.

A Snakemake job is one ``agrepa`` process. Importing torch, transformers, onnxruntime and the
stage modules costs seconds per process on a small CPU, and the embedded default runs hundreds
of short jobs. With ``warm_start: true`` in the config, a local Snakemake run (never a SLURM
one: a job must run inside its own allocation) starts ``python -m agrepa.warm SOCKET`` when
its jobs start (workflow/rules/common.smk) and exports ``AGREPA_WARM_SOCKET``. The ``agrepa``
console script is ``main`` below, which imports the standard library only: it hands its
arguments, working directory, environment and stdin/stdout/stderr to the server over that Unix
socket; the server forks a child that runs ``agrepa.cli.main`` exactly as a fresh process
would, and the child reports its exit status. Without the variable, or when the server does not
answer, ``agrepa`` runs in-process as before.

Snakemake's ``benchmark:`` file of a warm-started job measures the thin client, not the job (which
is the server's child, outside the client's process tree): 14 MiB for a 2-GiB training job. So the
child reports its peak resident set (``VmHWM``) and CPU time with its exit status, and the client
writes them into the job's log (``agrepa: warm-started job ...: max_rss ... MiB, cpu ... s``). On
SLURM, and with ``warm_start: false``, the benchmark files measure the job itself.

The child is a copy of a process that has imported modules and run nothing: no thread pool
started, no RNG drawn, no file open but the socket. It takes the job's environment, working
directory and thread counts before the command runs, so a job's outputs do not depend on
whether it ran warm or cold (tests/test_warm.py).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

SOCKET_ENV = "AGREPA_WARM_SOCKET"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)   # the client passes these on to its job
THREAD_ENV = "OMP_NUM_THREADS"       # Snakemake sets it to the job's `threads:` (so does torchrun)


# --- client: the `agrepa` console script -------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``agrepa ARGS``: run in the warm server when one takes the job, else in this process."""
    argv = sys.argv[1:] if argv is None else argv
    path = os.environ.get(SOCKET_ENV)
    rc = _run_warm(path, argv) if path else None
    if rc is None:
        from agrepa import cli
        rc = cli.main(argv)
    return rc


def _run_warm(path: str, argv: list[str]) -> int | None:
    """Hand the job to the server at ``path``; its exit status, or None when no server took it."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    data = struct.pack("!Q", len(request)) + request
    try:
        conn.connect(path)
        sent = socket.send_fds(conn, [data], [0, 1, 2])
        conn.sendall(data[sent:])
        reader = conn.makefile("r")
        pid = int(reader.readline())          # the forked job's pid: the server took the job
    except (OSError, ValueError):
        conn.close()
        return None
    received = []

    def forward(signum, frame):
        received.append(signum)
        os.kill(pid, signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    status = reader.readline().split()
    if status:
        if len(status) == 3:     # what Snakemake's benchmark: file of this client cannot see (module doc)
            print(f"agrepa: warm-started job (pid {pid}): max_rss {int(status[1]) / 1024:.1f} MiB, "
                  f"cpu {float(status[2]):.1f} s", file=sys.stderr)
        return int(status[0])
    if received:                  # the job ended on the signal passed on: end as a fresh process would
        signal.signal(received[-1], signal.SIG_DFL)
        os.kill(os.getpid(), received[-1])
    print(f"agrepa: the warm-started job (pid {pid}) ended without an exit status", file=sys.stderr)
    return 1


# --- server --------------------------------------------------------------------------------
# third-party modules the jobs import inside functions, each seconds a job otherwise (measured in
# an evaluate job: librosa's spectral features 1.6 s, matplotlib 0.3 s); none starts a thread
LAZY_IMPORTS = ("librosa.feature.spectral", "speechmos.dnsmos", "faster_whisper", "resemblyzer", "matplotlib.pyplot")


def preload() -> None:
    """Import what the jobs import: every module of the package (torch, transformers, ... with them)
    and :data:`LAZY_IMPORTS`."""
    import importlib
    import pkgutil

    import agrepa
    for info in pkgutil.walk_packages(agrepa.__path__, "agrepa."):
        if info.name != __name__:
            importlib.import_module(info.name)
    for name in LAZY_IMPORTS:
        importlib.import_module(name)


def serve(path: str) -> None:
    """Answer job requests on the Unix socket ``path`` until the process that started this
    server (Snakemake) exits or sends SIGTERM. The socket appears once the imports are done."""
    parent = os.getppid()
    preload()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    os.rename(path + ".tmp", path)       # clients never see a socket that is not listening yet
    listener.listen(64)
    listener.settimeout(1.0)
    try:
        while os.getppid() == parent:
            _reap()
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            conn.settimeout(10.0)
            try:
                request, fds = _receive(conn)
            except (OSError, ValueError) as err:      # a client that died while sending
                print(f"warm start: bad request: {err}", file=sys.stderr, flush=True)
                conn.close()
                continue
            conn.settimeout(None)
            pid = os.fork()
            if pid == 0:                      # the job: never back into this loop
                rc = 1
                try:
                    listener.close()
                    rc = _child(conn, request, fds)
                finally:
                    os._exit(rc)
            print(f"warm start: pid {pid}: agrepa {' '.join(request['argv'][:1])} in {request['cwd']}",
                  file=sys.stderr, flush=True)
            for fd in fds:
                os.close(fd)
            conn.close()
    finally:
        listener.close()
        os.unlink(path)


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    (size,) = struct.unpack("!Q", data[:8])
    data = data[8:]
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ValueError("the client closed the connection mid-request")
        data += chunk
    return json.loads(data), fds


def _child(conn: socket.socket, request: dict, fds: list[int]) -> int:
    """In the forked child: become the job (fds, cwd, environment, threads) and run it."""
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    _limit_threads(request["env"])
    conn.sendall(f"{os.getpid()}\n".encode())
    rc = 1
    try:
        from agrepa import cli
        sys.argv = ["agrepa", *request["argv"]]
        rc = cli.main(request["argv"])
    except SystemExit as stop:            # argparse's errors and --help: as sys.exit ends a process
        rc = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, int | None):
            print(stop.code, file=sys.stderr)
    except BaseException:                 # what an uncaught exception does to a fresh process
        import traceback
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        conn.sendall(f"{rc} {_peak_rss_kib()} {_cpu_seconds():.3f}\n".encode())
    return rc


def _peak_rss_kib() -> int:
    """The job's peak resident set (``VmHWM``, KiB), the server's pages it maps included, or the
    largest of its reaped DataLoader workers' if that is larger."""
    import resource
    with open("/proc/self/status") as f:
        hwm = next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
    return max(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def _cpu_seconds() -> float:
    """User + system CPU time of the job and its reaped children since the fork."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _limit_threads(env: dict) -> None:
    """The job's thread counts: a fresh process would have read OMP_NUM_THREADS & co. when
    torch and the BLAS libraries loaded; here they were loaded by the server."""
    import tempfile

    import threadpoolctl
    import torch
    tempfile.tempdir = None               # re-read TMPDIR (Snakemake's per-job tmpdir)
    if THREAD_ENV in env:
        n = int(env[THREAD_ENV])
        torch.set_num_threads(n)
        threadpoolctl.threadpool_limits(n, user_api="blas")


if __name__ == "__main__":
    serve(sys.argv[1])
