"""A real single-node SLURM cluster for the tests: Debian's slurm-wlm and munge, started as root in a temporary
directory (its own munge key and socket, its own ports, no accounting database), and stopped again, killing
only what it started.

    python -m tests.slurm_cluster DIR    # start one by hand; prints the SLURM_CONF to export; Ctrl-C or kill stops it
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
INSTALL = "apt-get install slurm-wlm munge"


def unavailable() -> str | None:
    """Why a cluster cannot be started here (one line, naming the install command), or None."""
    absent = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]
    if absent:
        return f"no real SLURM here ({', '.join(absent)} not installed): {INSTALL}, as root"
    if os.geteuid() != 0:
        return f"the SLURM daemons ({', '.join(DAEMONS)}) start only as root; run the tests as root"
    return None


def _daemon(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONF = """\
ClusterName=tlstmtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=300
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    """``with Cluster(dir) as c:``: a running cluster; ``c.env`` holds SLURM_CONF for its client commands."""

    def __init__(self, directory: Path, cpus: int | None = None) -> None:
        self.dir = Path(directory)
        self.cpus = cpus or os.cpu_count() or 1
        self.conf = self.dir / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.pids: dict[str, int] = {}

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def start(self) -> Cluster:
        why = unavailable()
        if why:
            raise RuntimeError(why)
        for sub in ("state", "spool"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        key = self.dir / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        self.conf.write_text(CONF.format(host=socket.gethostname(), ctld_port=_free_port(), d_port=_free_port(),
                                         dir=self.dir, cpus=self.cpus))
        try:
            self._start_daemons(key)
            self._wait_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_daemons(self, key: Path) -> None:
        d = self.dir
        subprocess.run([_daemon("munged"), "--force", f"--socket={d}/munge.socket", f"--key-file={key}",
                        f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log", f"--seed-file={d}/munged.seed"],
                       check=True, capture_output=True, timeout=30)
        self.pids["munged"] = self._pid("munged")
        for name, extra in (("slurmctld", ["-i"]), ("slurmd", [])):
            subprocess.run([_daemon(name), "-f", str(self.conf), *extra], env=self.env, check=True,
                           capture_output=True, timeout=30)
            self.pids[name] = self._pid(name)

    def _pid(self, name: str, timeout: float = 10) -> int:
        path = self.dir / f"{name}.pid"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                time.sleep(0.05)
        raise RuntimeError(f"{name} did not start; its log: {self.log(name)}")

    def log(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join((self.dir / f"{name}.log").read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T", check=False)
            if state.returncode == 0 and state.stdout.strip().startswith("idle"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the node did not come up idle: {self.log('slurmctld')}\n{self.log('slurmd')}")

    def cancel_all(self, timeout: float = 30) -> None:
        """Cancel every job and wait until none is left running or pending."""
        self.run("scancel", "--full", "--partition=debug", check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.run("squeue", "-h", check=False).stdout.strip():
            time.sleep(0.2)

    def state(self, job_id: str) -> str:
        """A job's state as squeue shows it ("" once it is no longer listed)."""
        listed = self.run("squeue", "-h", "--states=all", "-o", "%T", f"--jobs={job_id}", check=False)
        return listed.stdout.strip()

    def stop(self) -> None:
        """Cancel every job, then stop the daemons this cluster started (and the job steps they left)."""
        if "slurmctld" in self.pids:
            self.cancel_all()
        for name in reversed(DAEMONS):
            pid = self.pids.pop(name, None)
            if pid is not None:
                _kill(pid)
        for stepd in _children_named("slurmstepd"):  # a step a stopped slurmd left behind, in our spool dir
            if str(self.dir) in _cmdline(stepd) or _environ_has(stepd, str(self.conf)):
                _kill(stepd)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _kill(pid: int, timeout: float = 10) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _children_named(name: str) -> list[int]:
    found = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _environ_has(pid: int, text: str) -> bool:
    try:
        return text.encode() in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    # SIGINT (Ctrl-C; ignored by default in a background job) or SIGTERM (kill) stop the cluster cleanly
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    with Cluster(Path(sys.argv[1])) as cluster:
        print(f"export SLURM_CONF={cluster.conf}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
