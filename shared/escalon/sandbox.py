"""Run untrusted Python (candidate code) in a child process with time, memory, output and network limits.

What is enforced, in layers (each one on its own stops the attack it names; `Sandbox.enforced` lists the
layers active on this machine and the judge reports them):

1. Resource limits, set inside the child before any candidate code runs: RLIMIT_AS (memory; a memory bomb
   gets MemoryError or dies), RLIMIT_CPU (an infinite loop gets SIGXCPU), RLIMIT_FSIZE (output: stdout and
   stderr go to files, so a print loop is cut at the limit with SIGXFSZ), RLIMIT_NOFILE, and RLIMIT_NPROC
   when the child runs unprivileged. Plus a wall-clock timeout in the parent that kills the child's whole
   process group (sleeping or blocked code uses no CPU).
2. No network: a fresh network namespace (`unshare -n`, or `unshare -rn` in a user namespace when not
   root) has no interface but a down loopback, so every connect fails. Where namespaces are not allowed
   (most unprivileged containers), layer 3 still refuses sockets.
3. An audit hook (PEP 578), installed before the candidate runs and impossible to remove from Python,
   refuses socket creation and connection, name lookups, subprocesses, exec/spawn/fork (and importing
   _posixsubprocess, whose fork_exec raises no event), ctypes' dlopen, and file writes, removals, renames,
   links, mkdir and chmod outside the run's own temporary folder (paths resolved, so a symlink in the folder
   that points out counts as out).
4. Isolation: `python -I -S` (no user site, no site-packages, no PYTHON* variables, script folder not on
   sys.path), an empty environment, stdin closed, the working folder a fresh temporary folder removed
   afterwards, and, when the judge runs as root, the child drops to uid/gid 65534 (nobody) via setpriv.

This is a judge's sandbox for model-written snippets, not a hardened jail: a kernel exploit or a CPython
memory-safety bug could escape it. Deploy the judge in a pod with no egress (NetworkPolicy) and a read-only
root filesystem, as the chart does, for defence in depth.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

NOBODY = 65534

# Runs in the child before the candidate: limits, then the audit hook, then the candidate file.
_BOOTSTRAP = r'''
import os, resource, sys
_MEM, _CPU, _FSIZE, _NOFILE, _NPROC, _HOME = {mem}, {cpu}, {fsize}, {nofile}, {nproc}, {home!r}
resource.setrlimit(resource.RLIMIT_AS, (_MEM, _MEM))
resource.setrlimit(resource.RLIMIT_CPU, (_CPU, _CPU + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (_FSIZE, _FSIZE))
resource.setrlimit(resource.RLIMIT_NOFILE, (_NOFILE, _NOFILE))
if _NPROC and os.geteuid() != 0:
    resource.setrlimit(resource.RLIMIT_NPROC, (_NPROC, _NPROC))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

_BLOCKED = ("socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo",
            "socket.gethostbyname", "socket.gethostbyaddr", "subprocess.Popen", "os.system", "os.exec",
            "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "ctypes.dlopen", "os.kill", "os.killpg",
            "pty.spawn", "os.startfile", "sys.remote_exec")

# Events that change the file system at a path: every path they name must resolve inside the run's folder.
_CHANGES = ("os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.symlink", "os.link", "os.chmod", "os.chown",
            "os.truncate", "os.utime", "os.chflags", "os.lchflags", "os.mkfifo", "os.mknod", "shutil.rmtree",
            "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.move", "shutil.chown", "os.setxattr",
            "os.removexattr")
# Modules that reach the kernel past the hooks above (_posixsubprocess.fork_exec raises no audit event).
_NO_IMPORT = ("_posixsubprocess",)
_realpath, _fspath = os.path.realpath, os.fspath

def _inside(path, _home=_HOME):
    if isinstance(path, int):  # a file descriptor: it was opened under the rules already
        return True
    try:
        path = _fspath(path)
    except TypeError:
        return True  # not a path (a mode, flags, dir_fd None)
    if isinstance(path, bytes):
        path = path.decode("utf-8", "surrogateescape")
    resolved = _realpath(path)  # follows symlinks: a link in the folder to the outside is the outside
    return resolved == _home or resolved.startswith(_home + "/")

def _hook(event, args, _blocked=_BLOCKED, _changes=_CHANGES):
    if event in _blocked:
        raise PermissionError(f"sandbox: {{event}} is not allowed")
    if event == "open" and len(args) > 1 and isinstance(args[0], (str, bytes)):
        mode, flags = args[1], (args[2] if len(args) > 2 else 0)
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & 3)
        if writing and not _inside(args[0]):
            raise PermissionError(f"sandbox: writing {{args[0]!r}} is not allowed")
    elif event in _changes:
        for arg in args:
            if isinstance(arg, (str, bytes)) and not _inside(arg):
                raise PermissionError(f"sandbox: {{event}} outside its folder is not allowed")
    elif event == "import" and args and args[0] in _NO_IMPORT:
        raise PermissionError(f"sandbox: importing {{args[0]}} is not allowed")

sys.addaudithook(_hook)
del _hook, resource
_path = sys.argv[1]
sys.argv = sys.argv[1:]
with open(_path) as _f:
    _code = compile(_f.read(), _path, "exec")
_globals = {{"__name__": "__main__", "__file__": _path, "__builtins__": __builtins__}}
del _f, _path
exec(_code, _globals)
'''


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 5.0
    cpu_s: int = 2
    memory_mb: int = 256
    output_kb: int = 256
    open_files: int = 32
    processes: int = 64


@dataclass(frozen=True)
class SandboxResult:
    status: str  # ok | error | timeout | memory | output-limit | killed
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Sandbox:
    def __init__(self, limits: SandboxLimits = SandboxLimits(), *, python: str | None = None,
                 network: str = "auto", drop_privileges: bool = True) -> None:
        """network: "auto" (a network namespace when the kernel allows one, else the audit hook alone),
        "namespace" (require one; fail when it cannot be made), "hook" (audit hook only)."""
        if network not in ("auto", "namespace", "hook"):
            raise ValueError(f"network must be auto, namespace or hook, not {network!r}")
        self.limits = limits
        self.python = python or sys.executable
        self.network = network
        self.drop_privileges = drop_privileges

    @cached_property
    def _namespace_prefix(self) -> list[str] | None:
        if self.network == "hook" or not shutil.which("unshare"):
            return None
        for prefix in (["unshare", "-n"], ["unshare", "-rn"]):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                if subprocess.run([*prefix, "true"], capture_output=True, timeout=5).returncode == 0:
                    return prefix
        if self.network == "namespace":
            raise RuntimeError("no network namespace can be created here (unshare -n / -rn refused)")
        return None

    @cached_property
    def _privilege_prefix(self) -> list[str]:
        if self.drop_privileges and os.geteuid() == 0 and shutil.which("setpriv"):
            return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
        return []

    @cached_property
    def enforced(self) -> tuple[str, ...]:
        lim = self.limits
        out = [f"wall {lim.wall_s:g} s (process group killed)", f"CPU {lim.cpu_s} s (RLIMIT_CPU)",
               f"memory {lim.memory_mb} MB (RLIMIT_AS)", f"output {lim.output_kb} KB (RLIMIT_FSIZE)",
               "no network: audit hook refuses sockets and name lookups",
               "no subprocesses, exec, fork or ctypes (audit hook)", "writes only in a fresh temporary folder",
               "python -I -S, empty environment, stdin closed"]
        if self._namespace_prefix:
            out.append(f"no network: fresh network namespace ({' '.join(self._namespace_prefix)})")
        if self._privilege_prefix:
            out.append(f"runs as uid {NOBODY} (setpriv), RLIMIT_NPROC {lim.processes}")
        return tuple(out)

    def run(self, source: str) -> SandboxResult:
        return self.run_many([source])[0]

    def run_many(self, sources: list[str]) -> list[SandboxResult]:
        """Run several programs at once (each in its own folder and process group) under one wall clock."""
        runs = [self._start(source) for source in sources]
        deadline = time.monotonic() + self.limits.wall_s
        ended: dict[int, float] = {}
        while len(ended) < len(runs) and time.monotonic() < deadline:
            for i, (proc, _, _) in enumerate(runs):
                if i not in ended and proc.poll() is not None:
                    ended[i] = time.monotonic()
            if len(ended) < len(runs):
                time.sleep(0.005)
        results = []
        for i, (proc, folder, started) in enumerate(runs):
            timed_out = i not in ended and proc.poll() is None
            if timed_out:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            results.append(self._finish(proc, folder, ended.get(i, time.monotonic()) - started, timed_out))
        return results

    def _start(self, source: str) -> tuple[subprocess.Popen, Path, float]:
        folder = Path(tempfile.mkdtemp(prefix="escalon-sandbox-"))
        lim = self.limits
        bootstrap = _BOOTSTRAP.format(mem=lim.memory_mb * 2**20, cpu=lim.cpu_s, fsize=lim.output_kb * 1024,
                                      nofile=lim.open_files, nproc=lim.processes, home=str(folder.resolve()))
        (folder / "candidate.py").write_text(source)
        (folder / "bootstrap.py").write_text(bootstrap)
        if self._privilege_prefix:
            os.chmod(folder, 0o777)  # the unprivileged child writes its outputs here
            for name in ("candidate.py", "bootstrap.py"):
                os.chmod(folder / name, 0o644)
        out = open(folder / "stdout", "wb")
        err = open(folder / "stderr", "wb")
        command = [*(self._namespace_prefix or []), *self._privilege_prefix, self.python, "-I", "-S",
                   str(folder / "bootstrap.py"), str(folder / "candidate.py")]
        try:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=folder,
                                    env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, start_new_session=True)
        finally:
            out.close()
            err.close()
        return proc, folder, time.monotonic()

    def _finish(self, proc: subprocess.Popen, folder: Path, seconds: float, timed_out: bool) -> SandboxResult:
        limit = self.limits.output_kb * 1024
        stdout = (folder / "stdout").read_bytes()[:limit].decode("utf-8", "replace")
        stderr = (folder / "stderr").read_bytes()[:limit].decode("utf-8", "replace")
        shutil.rmtree(folder, ignore_errors=True)
        code = proc.returncode
        if timed_out or code in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
            status = "timeout"
        elif code in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ) or "File too large" in stderr:
            status = "output-limit"
        elif code != 0 and "MemoryError" in stderr:
            status = "memory"
        elif code is not None and code < 0:
            status = "killed"
        elif code != 0:
            status = "error"
        else:
            status = "ok"
        return SandboxResult(status, code, stdout, stderr, seconds)
