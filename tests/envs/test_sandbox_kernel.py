"""The sandbox's kernel layers on their own (the audit hook off): the seccomp allow-list, the
run's cgroups, pipes instead of host files, cleanup after a killed trainer, and the limits'
validation."""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import signal
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

import marlhf.envs.coding.cgroup as cgroup
from marlhf.envs.coding.process import clean_stale_folders, kernel_limits
from marlhf.envs.coding.sandbox import SandboxLimits, Status, run_calls
from marlhf.envs.coding.seccomp import syscall_number

BARE = SandboxLimits(timeout_s=5.0, cpu_s=5, memory_mb=512, audit_hook=False)
NEEDS_CGROUPS = pytest.mark.skipif(
    bool(cgroup.cgroup_support()),
    reason=f"this machine gives no memory and pids cgroups: {cgroup.cgroup_support()}",
)

#: name -> C arguments after the number; each must fail with EPERM (clone3: ENOSYS).
REFUSED: dict[str, str] = {
    "memfd_create": "b'x', 0",
    "fallocate": "1, 1, 0, 2**31",
    "fchmod": "1, 0o6755",
    "fchmodat": "-100, b'work.txt', 0o4755, 0",
    "chmod": "b'work.txt', 0o2755",
    "ptrace": "16, 1, 0, 0",
    "process_vm_readv": "1, 0, 0, 0, 0, 0",
    "unshare": "0x10000000",
    "setns": "0, 0",
    "mount": "b'none', b'/sandbox', b'tmpfs', 0, 0",
    "umount2": "b'/sandbox', 0",
    "pivot_root": "b'/', b'/'",
    "chroot": "b'/sandbox'",
    "io_uring_setup": "4, ctypes.create_string_buffer(120)",
    "io_uring_enter": "0, 0, 0, 0, 0, 0",
    "io_uring_register": "0, 0, 0, 0",
    "bpf": "0, ctypes.create_string_buffer(128), 128",
    "perf_event_open": "ctypes.create_string_buffer(128), 0, -1, -1, 0",
    "keyctl": "0, -3, 0",
    "add_key": "b'user', b'k', b'v', 1, -3",
    "request_key": "b'user', b'k', 0, -3",
    "userfaultfd": "0",
    "shmget": "0, 4096, 0o1600",
    "socket": "2, 1, 0",
    "open_by_handle_at": "-100, 0, 0",
    "setuid": "0",
    "fork": "",
    "clone": "17, 0, 0, 0, 0",  # a process (SIGCHLD, no CLONE_THREAD)
    "clone with a namespace": "0x00010000 | 0x00000100 | 0x00000800 | 0x20000000, 0, 0, 0, 0",
    "clone3": "ctypes.create_string_buffer(88), 88",
}


def probe_program(names: list[str]) -> str:
    """``f()`` tries each call of :data:`REFUSED` and returns ``{name: errno or 'ok'}``."""
    lines = ["def f():", "    import ctypes, os", "    libc = ctypes.CDLL(None, use_errno=True)"]
    lines += ["    open('work.txt', 'w').close()", "    out = {}"]
    for name in names:
        nr = syscall_number(name.split()[0])
        args = REFUSED[name]
        lines += [
            f"    r = libc.syscall({nr}{', ' if args else ''}{args})",
            "    if r == 0 and os.getpid() != PID:\n        os._exit(0)",
            f"    out[{name!r}] = 'ok' if r >= 0 else ctypes.get_errno()",
        ]
    lines.insert(1, "    PID = __import__('os').getpid()")
    return "\n".join(lines) + "\n    return out\n"


def call(program: str, limits: SandboxLimits = BARE, entry: str = "f") -> object:
    outcome = run_calls(program, entry, [((), {})], limits)
    assert outcome.status is None, outcome
    (result,) = outcome.results
    assert result.kind == "value", result
    return result.value


def test_the_allow_list_refuses_each_listed_call() -> None:
    """Every call the issue names, tried through ``ctypes`` with the audit hook off."""
    assert all(syscall_number(n.split()[0]) is not None for n in REFUSED), "not x86-64/aarch64?"
    got = call(probe_program(list(REFUSED)))
    expected = {n: errno.EPERM for n in REFUSED} | {"clone3": errno.ENOSYS}
    assert got == expected


def test_ordinary_programs_still_run_under_the_filter() -> None:
    program = textwrap.dedent(
        """
        def f():
            import os, random, tempfile, threading, time, json, concurrent.futures
            os.chmod('.', 0o755)
            open('a.txt', 'w').write('x')
            os.chmod('a.txt', 0o600)
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                squares = list(pool.map(lambda x: x * x, range(8)))
            time.sleep(0.01)
            with tempfile.TemporaryDirectory(dir='.') as d:
                open(os.path.join(d, 'b'), 'w').write('y')
            return [squares[-1], len(os.urandom(8)), random.Random(0).randint(0, 9), os.getcwd()]
        """
    )
    assert call(program) == [49, 8, 6, "/sandbox"]


def test_subprocesses_when_allowed_but_never_namespaces() -> None:
    allowed = dataclasses.replace(BARE, allow_subprocess=True)
    program = (
        "def f():\n    import subprocess, ctypes\n"
        "    done = subprocess.run(['/bin/echo', 'hi'], capture_output=True, text=True)\n"
        "    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    return [done.stdout, libc.unshare(0x10000000), ctypes.get_errno()]\n"
    )
    assert call(program, allowed) == ["hi\n", -1, errno.EPERM]


def test_stdout_and_stderr_are_pipes_read_with_a_limit() -> None:
    program = (
        "def f():\n    import os, stat\n"
        "    return [stat.S_ISFIFO(os.fstat(fd).st_mode) for fd in (1, 2)]\n"
    )
    assert call(program) == [True, True]
    flood = "def f():\n    import sys\n    while True:\n        sys.stdout.write('y' * 2**16)\n"
    limits = dataclasses.replace(BARE, file_size_mb=1, output_chars=50)
    start = time.monotonic()
    outcome = run_calls(flood, "f", [((), {})], limits)
    assert time.monotonic() - start < 4.0  # ended by the closed pipe, not the time limit
    assert outcome.results[0].kind == "error" and "BrokenPipeError" in outcome.results[0].error
    assert outcome.stdout == "y" * 50


@NEEDS_CGROUPS
def test_memory_the_address_space_limit_misses_is_counted_by_the_cgroup() -> None:
    """tmpfs pages are not address space: a 300 MiB file in a big work folder is stopped by
    the run's memory cgroup (``memory_mb`` + slack), not by ``RLIMIT_AS``."""
    program = (
        "def f():\n    with open('big', 'wb') as fh:\n        for _ in range(300):\n"
        "            fh.write(b'x' * 2**20)\n    return 'wrote all'\n"
    )
    small = dataclasses.replace(BARE, memory_mb=64, disk_mb=512, file_size_mb=1024)
    outcome = run_calls(program, "f", [((), {})], small)
    assert outcome.status is Status.KILLED and "memory limit (cgroup)" in outcome.error, outcome
    roomy = dataclasses.replace(small, memory_mb=512)
    assert call(program, roomy) == "wrote all"


@NEEDS_CGROUPS
def test_threads_are_counted_by_the_pids_cgroup() -> None:
    program = (
        "def f():\n    import threading, time\n    threading.stack_size(32768)\n    n = 0\n"
        "    try:\n        while n < 1000:\n"
        "            threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\n"
        "            n += 1\n    except RuntimeError:\n        pass\n    return n\n"
    )
    n = call(program, dataclasses.replace(BARE, max_processes=16))
    assert isinstance(n, int) and 8 <= n < 16  # bwrap and the interpreter hold a few


def test_without_cgroups_root_gets_no_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback: no cgroup counts threads and, as root, ``RLIMIT_NPROC`` is void, so the
    filter refuses them; programs without threads run as before."""
    monkeypatch.setattr(cgroup, "_probe", lambda: (None, "none in this test"))
    assert kernel_limits() == "rlimit"
    program = "def f():\n    import threading\n    threading.Thread(target=print).start()\n"
    outcome = run_calls(program, "f", [((), {})], BARE)
    if os.geteuid() == 0:
        assert outcome.results[0].kind == "error" and "thread" in outcome.results[0].error
    assert call("def f():\n    return sum(range(10))\n") == 45


@NEEDS_CGROUPS
def test_a_run_cgroup_has_its_limits_and_is_removed() -> None:
    group = cgroup.create(96 * 2**20, 12)
    assert group is not None
    try:
        texts = {f.name: f for f in group.folders}
        assert len(texts) >= 1
        if group.version == 1:
            memory, pids = group.folders
            assert int((memory / "memory.limit_in_bytes").read_text()) == 96 * 2**20
            assert (pids / "pids.max").read_text().strip() == "12"
        else:
            (folder,) = group.folders
            assert int((folder / "memory.max").read_text()) == 96 * 2**20
            assert (folder / "pids.max").read_text().strip() == "12"
    finally:
        group.remove()
    assert not any(f.exists() for f in group.folders)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_groups_and_folders_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = dead_pid()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale = tmp_path / f"marlhf-sandbox-{gone}-abc"
    ours = tmp_path / f"marlhf-sandbox-{os.getpid()}-abc"
    for folder in (stale, ours):
        (folder / "sub").mkdir(parents=True)
    assert clean_stale_folders.__wrapped__() == [str(stale)]
    assert not stale.exists() and ours.exists()
    layout = cgroup._probe()[0]
    if layout is not None:
        left = [
            base / f"marlhf-sandbox-{gone}-3" for base in {layout.memory_base, layout.pids_base}
        ]
        for folder in left:
            folder.mkdir()
        assert sorted(cgroup.clean_stale()) == sorted(left)
        assert not any(f.exists() for f in left)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] not in ("Z", "X"):
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("isolation", ["bwrap", "unsafe-no-isolation"])
def test_a_killed_trainer_leaves_no_process_and_its_leftovers_are_cleaned(
    isolation: str, tmp_path: Path
) -> None:
    """SIGKILL the scoring process mid-run: every process of the run dies with it (bwrap's
    parent-death signal and PID namespace; the unsafe child's own parent-death signal), and
    what it could not remove (its cgroups, the unsafe mode's folder) goes at the next start."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()  # the trainer: this process's copy, so no second start-up of torch
    if pid == 0:
        try:
            os.close(ready_r)
            tempfile.tempdir = str(tmp_path)
            os.write(ready_w, b"go")
            limits = SandboxLimits(timeout_s=60, cpu_s=60, isolation=isolation)
            run_calls("def f():\n    import time\n    time.sleep(60)\n", "f", [((), {})], limits)
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 2) == b"go"
        deadline = time.monotonic() + 20
        while len(descendants(pid)) < (3 if isolation == "bwrap" else 1):
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.05)
        time.sleep(0.3)
        run = descendants(pid)
    finally:
        os.close(ready_r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    deadline = time.monotonic() + 5
    while any(alive(p) for p in run) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in run), "a process of the run outlived the trainer"
    left = list(tmp_path.iterdir())
    assert len(left) == (0 if isolation == "bwrap" else 1)  # the unsafe work folder
    tempfile_dir = tempfile.tempdir
    try:
        tempfile.tempdir = str(tmp_path)
        clean_stale_folders.__wrapped__()
    finally:
        tempfile.tempdir = tempfile_dir
    assert list(tmp_path.iterdir()) == []
    layout = cgroup._probe()[0]
    if layout is not None and isolation == "bwrap":
        prefix = f"marlhf-sandbox-{pid}-"
        stale = [f for f in layout.memory_base.iterdir() if f.name.startswith(prefix)]
        assert stale, "expected the killed trainer's cgroup to be left"
        cgroup.clean_stale()
        assert not [f for f in layout.memory_base.iterdir() if f.name.startswith(prefix)]


@pytest.mark.parametrize("field", ["timeout_s", "cpu_s", "memory_mb", "file_size_mb", "disk_mb"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e300, 0, -1, True, "5"])
def test_limits_refuse_non_finite_and_absurd_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"SandboxLimits.{field}="):
        SandboxLimits(**{field: value})  # type: ignore[arg-type]


def test_limits_accept_whole_floats_and_refuse_fractions_of_a_mib() -> None:
    assert SandboxLimits(memory_mb=256.0).memory_mb == 256  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"memory_mb=256\.5 must be a whole number"):
        SandboxLimits(memory_mb=256.5)  # type: ignore[arg-type]
    for field in ("max_processes", "result_mb"):
        with pytest.raises(ValueError, match=f"SandboxLimits.{field}="):
            SandboxLimits(**{field: math.nan})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="audit_hook"):
        SandboxLimits(audit_hook="no")  # type: ignore[arg-type]


def test_an_answer_past_the_result_limit_counts_as_missing() -> None:
    program = "def f(n):\n    return 'x' * n\n"
    limits = dataclasses.replace(BARE, result_mb=1)
    outcome = run_calls(program, "f", [((10,), {}), ((3 * 2**20,), {})], limits)
    assert [r.kind for r in outcome.results] == ["value", "missing"], outcome.results
    assert outcome.results[0].value == "x" * 10


def test_a_cgroup_that_cannot_be_joined_means_the_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    layout = cgroup._probe()[0]
    if layout is None:
        pytest.skip(f"no cgroups here: {cgroup.cgroup_support()}")
    monkeypatch.setattr(cgroup, "JOIN_SCRIPT", "exit 125")
    found, why = cgroup._probe_once.__wrapped__()
    assert found is None and "cannot join" in why


@pytest.mark.parametrize("value", [math.nan, math.inf, 0, -2.0])
def test_humaneval_refuses_a_bad_timeout_naming_it(value: float) -> None:
    from marlhf.envs.coding.humaneval import HumanEvalTask

    problem = {"prompt": "def f():\n", "test": "def check(c):\n    assert c() == 1\n"}
    problem["entry_point"] = "f"
    with pytest.raises(ValueError, match="HumanEvalTask: timeout_s="):
        HumanEvalTask(split="all", problems={"a": problem, "b": problem}, timeout_s=value)


def fake_proc(tmp_path: Path, mountinfo: str, cgroups: str) -> None:
    (tmp_path / "mountinfo").write_text(mountinfo)
    (tmp_path / "cgroup").write_text(cgroups)


def test_the_cgroup_layouts_are_read_from_the_mount_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """v2 (this machine has only v1, so v2 is read from a fake table here), v1 as in this
    container, and a v1 hierarchy mounted at a sub-group (a container without cgroup ns)."""
    monkeypatch.setattr(cgroup, "_MOUNTS", str(tmp_path / "mountinfo"))
    monkeypatch.setattr(cgroup, "_CGROUPS", str(tmp_path / "cgroup"))
    unified = tmp_path / "unified"
    (unified / "job").mkdir(parents=True)
    (unified / "job" / "cgroup.controllers").write_text("cpu io memory pids\n")
    fake_proc(
        tmp_path,
        f"30 23 0:27 / {unified} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        "0::/job\n",
    )
    assert cgroup._layout() == cgroup._Layout(2, unified / "job", unified / "job")
    (unified / "job" / "cgroup.controllers").write_text("cpu io\n")
    assert cgroup._layout() is None  # v2 without memory and pids, and no v1
    fake_proc(
        tmp_path,
        "32 31 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "33 31 0:30 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
        f"34 31 0:31 / {unified} rw - cgroup2 cgroup2 rw\n",
        "4:memory:/api/x\n8:pids:/\n0::/job\n",
    )
    found = cgroup._layout()
    assert found == cgroup._Layout(
        1, Path("/sys/fs/cgroup/memory/api/x"), Path("/sys/fs/cgroup/pids")
    )
    fake_proc(
        tmp_path,
        "32 31 0:29 /api/x /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "33 31 0:30 /api/x /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n",
        "4:memory:/api/x/y\n8:pids:/api/x\n",
    )
    assert cgroup._layout() == cgroup._Layout(
        1, Path("/sys/fs/cgroup/memory/y"), Path("/sys/fs/cgroup/pids")
    )


def test_a_run_whose_cgroups_cannot_be_made_falls_back_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import marlhf.envs.coding.process as process

    def refuse(memory_bytes: int, tasks: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(process, "create_cgroup", refuse)
    with pytest.warns(RuntimeWarning, match="No space left on device"):
        assert call("def f():\n    return 7\n") == 7
    program = "def f():\n    import threading\n    threading.Thread(target=print).start()\n"
    with pytest.warns(RuntimeWarning):
        outcome = run_calls(program, "f", [((), {})], BARE)
    if os.geteuid() == 0:
        assert outcome.results[0].kind == "error" and "thread" in outcome.results[0].error
