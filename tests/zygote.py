"""A fork server for the tests' processes: `python tests/zygote.py SOCKET` imports torch (and the
other heavy third-party modules every training process imports) once, then forks a real process
for each command it is sent. Each test process pays ~0.1 s to start instead of ~2.5 s of imports
(torch, torch._dynamo, which torch.optim loads, torchvision), most of the suite's time on 2 cores.

What a test gets is a real process: its own pid and session (the test signals its group), its
own stdout/stderr pipes, environment, cwd, argv and sys.path, its exit code (negative: killed by
that signal, as subprocess reports it), DataLoader workers and gloo ranks of its own. gan_dist
itself is never imported here, so every gan_dist module is imported fresh in each process, as
under `python -m gan_dist.train`. Hash seeds: each zygote has its own (PYTHONHASHSEED=random), and
the tests send rank r of a run to zygote r % 2, so two ranks never share one (iteration orders
that differ between ranks stay as likely as between fresh interpreters).

Not covered here, and so run as fresh interpreters by the tests that need them: interpreter
start-up and import laziness (tests/test_startup.py), launchers (torchrun, srun, sbatch,
submitit), `-c` commands. GAN_DIST_TEST_FRESH_PROCESSES=1 makes every test process a fresh
interpreter (the whole suite passes either way).

Protocol, on a Unix socket: the client sends a 12-byte length with three file descriptors
(stdin, stdout, stderr; SCM_RIGHTS), then that many bytes of JSON {"argv", "env", "cwd"}. The
zygote forks a supervisor, which forks the process and answers {"pid": N}\\n, then
{"returncode": RC}\\n when it ends.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys

PRELOAD = ("torch", "torch._dynamo", "torch.distributed", "torch.nn.parallel", "torch.utils.data", "torchvision",
           "numpy", "PIL.Image", "PIL.PngImagePlugin", "yaml")
HEADER = 12


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = conn.recv(n)
        if not chunk:
            raise ConnectionError("client went away")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _run(argv: list[str], env: dict, cwd: str, base_path: list[str]) -> int:
    """In the forked process: become what `python ARGV...` would be, run it, return its exit code."""
    import runpy
    import traceback

    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    python_path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if argv[0] == "-m":  # python -m MODULE: the cwd first on sys.path
        sys.argv = [argv[1], *argv[2:]]
        sys.path[:] = [cwd, *python_path, *base_path]
    else:  # python SCRIPT: the script's folder first
        sys.argv = list(argv)
        sys.path[:] = [os.path.dirname(os.path.abspath(argv[0])), *python_path, *base_path]
    if "numpy" in sys.modules:  # its global RNG was seeded in the zygote: fresh entropy, as a new process has
        sys.modules["numpy"].random.seed()
    try:
        if argv[0] == "-m":
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(argv[0], run_name="__main__")
        return 0
    except SystemExit as e:
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code & 0xFF
        print(e.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # CPython: the traceback, then death by SIGINT
        traceback.print_exc()
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    except BaseException:
        sys.excepthook(*sys.exc_info())
        return 1


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _finish(code: int) -> None:
    """What the interpreter does at exit: join non-daemon threads, run atexit (those registered by
    the preloaded modules, e.g. multiprocessing's, are there as in a fresh process), flush."""
    import atexit
    import threading

    try:
        threading._shutdown()
    except Exception:
        pass
    atexit._run_exitfuncs()
    _flush()
    os._exit(code)


def _supervise(conn: socket.socket, fds: list[int], request: dict, base_path: list[str]) -> None:
    """The zygote's child: fork the process, report its pid, wait for it, report how it ended."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the zygote ignores it (auto-reap); waitpid needs it
    pid = os.fork()
    if pid == 0:
        conn.close()
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGQUIT, signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        code = 1
        try:
            code = _run(request["argv"], request["env"], request["cwd"], base_path)
        finally:
            _finish(code)
    for fd in fds:
        os.close(fd)
    try:
        conn.sendall((json.dumps({"pid": pid}) + "\n").encode())
        _, status = os.waitpid(pid, 0)
        conn.sendall((json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n").encode())
    except OSError:
        pass  # the test went away; its process is its to kill
    os._exit(0)


def serve(path: str) -> None:
    for name in PRELOAD:
        __import__(name)
    here = os.path.dirname(os.path.abspath(__file__))
    own = set(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p) | {here}
    base_path = [p for p in sys.path if p not in own]
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        try:
            header, fds, _, _ = socket.recv_fds(conn, HEADER, 3)
            if len(fds) != 3:
                raise ConnectionError(f"expected 3 file descriptors, got {len(fds)}")
            header += _recv_exactly(conn, HEADER - len(header))
            request = json.loads(_recv_exactly(conn, int(header)))
        except (OSError, ValueError):
            conn.close()
            continue
        _flush()
        if os.fork() == 0:
            listener.close()
            _supervise(conn, fds, request, base_path)
        conn.close()
        for fd in fds:
            os.close(fd)


# ---- the client: what the tests hold ---------------------------------------------------
class ZygoteProcess:
    """The part of subprocess.Popen(text=True, stdout=PIPE, stderr=PIPE) the tests use: pid,
    returncode, poll(), wait(timeout), communicate(timeout), for a process zygote `path` forks."""

    def __init__(self, cmd: list[str], env: dict, cwd, path: str):
        self.args = cmd
        self.returncode = None
        self._buffer = b""
        self._output = {"out": [], "err": []}
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        stdin = os.open(os.devnull, os.O_RDONLY)
        try:
            self._control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._control.connect(path)
            payload = json.dumps({"argv": cmd[1:], "env": dict(env), "cwd": str(cwd or os.getcwd())}).encode()
            socket.send_fds(self._control, [f"{len(payload):{HEADER}d}".encode()], [stdin, out_w, err_w])
            self._control.sendall(payload)
        finally:
            for fd in (stdin, out_w, err_w):
                os.close(fd)
        self._pipes = {"out": out_r, "err": err_r}
        self.pid = self._message(timeout=60)["pid"]

    def __del__(self):  # as a Popen's pipes close with it
        for fd in getattr(self, "_pipes", {}).values():
            os.close(fd)
        if hasattr(self, "_control"):
            self._control.close()

    def _message(self, timeout):
        """The next line the supervisor sends (None when `timeout` passes first)."""
        import select
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._control], [], [], left)[0]:
                return None
            chunk = self._control.recv(4096)
            if not chunk:
                raise RuntimeError(f"the test zygote's supervisor of {self.args[:3]} went away")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def poll(self):
        if self.returncode is None:
            message = self._message(timeout=0)
            if message is not None:
                self.returncode = message["returncode"]
                self._control.close()
        return self.returncode

    def wait(self, timeout=None):
        import subprocess

        if self.returncode is None:
            message = self._message(timeout)
            if message is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.returncode = message["returncode"]
            self._control.close()
        return self.returncode

    def communicate(self, timeout=None):
        """Read stdout and stderr to their ends, then wait; TimeoutExpired keeps what was read."""
        import selectors
        import subprocess
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            for name, fd in self._pipes.items():
                sel.register(fd, selectors.EVENT_READ, name)
            while sel.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                for key, _ in sel.select(left):
                    data = os.read(key.fd, 65536)
                    if data:
                        self._output[key.data].append(data)
                    else:
                        sel.unregister(key.fd)
                        os.close(key.fd)
                        del self._pipes[key.data]
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return tuple(b"".join(self._output[k]).decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
                     for k in ("out", "err"))


if __name__ == "__main__":
    serve(sys.argv[1])
