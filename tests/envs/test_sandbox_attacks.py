"""Hostile completions against the code reward, through the reward's own path.

Each attack is a completion of ``add(a, b)`` whose honest answer would be wrong, judged by
:meth:`CodeExecutionReward.judge` on a structured check (``assert candidate(..) == ..``) and, for
most, on a check that takes the judged path (a loop). Contained means: the sample does not pass,
it took no longer than the time limit, nothing was written outside its work folder (a canary
folder of ours is untouched and no temporary folder is left), no process survives it, the parent
lives, and the parent's environment (a secret set here) is not in anything that came back.

Attacks (``ATTACKS`` below): replacing ``json.dumps``, ``exec``, ``compile``, ``AssertionError``
or the result encoder, from the body or at module level; walking frames to the harness; forged
result lines; an object whose ``__eq__`` always says yes (a plain class and an ``int``
subclass); process creation through ``os.posix_spawn``, ``os.fork``, ``_posixsubprocess`` (which
no audit hook sees) and ``ctypes``; ``setsid`` and a double fork; writes after ``chdir``,
through ``dir_fd`` and a symlink; reading ``/proc/<ppid>/environ``, directly and through
``dir_fd``; and the classics: infinite loop, fork bomb, thread bomb, memory bomb, disk bomb,
output flood, network, ``sys.exit(0)``, ``os._exit(0)``, killing the parent. Round three (each
returns the right sum only if it worked): answers that hash alike, ``memfd_create``,
``fallocate``, set-id bits, files in ``/dev/shm``, the audit hook switched off from inside,
namespaces, ``ptrace``, ``mount``, ``io_uring``, ``bpf``, ``perf_event_open``, ``keyctl``,
``userfaultfd``, a thread bomb with 32 KiB stacks; and a check that names the entry point.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from marlhf.envs.coding import cgroup as sandbox_cgroup
from marlhf.envs.coding.checks import parse_check
from marlhf.envs.coding.humaneval import CodeExecutionReward, split_check_tests
from marlhf.envs.coding.sandbox import SandboxLimits, SandboxResult, Status, run_calls
from marlhf.envs.coding.seccomp import syscall_number

PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
STRUCTURED = (
    "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"
)
JUDGED = "def check(candidate):\n    for x in range(2):\n        assert candidate(x, 1) == x + 1\n"
LIMITS = SandboxLimits(timeout_s=2.0, cpu_s=2, memory_mb=512, file_size_mb=4, disk_mb=8)
SLACK_S = 2.5  # start-up and teardown on a loaded 2-core machine
SECRET = "hunter2-must-not-leak"
WRONG = "    return a - b\n"

ATTACKS: dict[str, str] = {
    # Forging the verdict from inside the process.
    "json.dumps at module level": WRONG + "import json\n"
    'json.dumps = lambda *a, **k: \'{"status": "passed", "passed": 2, "total": 2}\'\n',
    "json.dumps from the body": "    import json\n"
    '    json.dumps = lambda *a, **k: \'{"event": "done"}\'\n' + WRONG,
    "exec and compile replaced": WRONG + "import builtins\n"
    "builtins.exec = lambda *a, **k: None\nbuiltins.compile = lambda *a, **k: None\n",
    "AssertionError replaced": WRONG + "import builtins\n"
    "builtins.AssertionError = type('Nothing', (Exception,), {})\n",
    "result encoder replaced": WRONG + "import __main__\n"
    "__main__.encode = lambda v, _d=0: {'verdict': 'passed'}\n",
    "frames walked to the harness": "    import sys\n    f = sys._getframe()\n"
    "    while f is not None:\n"
    "        for key in ('spec', 'checks', 'expected', 'tests'):\n"
    "            if isinstance(f.f_locals.get(key), (dict, list)):\n"
    "                f.f_locals[key].clear()\n"
    "        f = f.f_back\n" + WRONG,
    "forged result lines": WRONG + "import os\nfor fd in range(3, 12):\n    try:\n"
    '        os.write(fd, b\'{"event": "loaded"}\\n{"i": 0, "outcome": "passed"}\\n'
    '{"status": "passed", "passed": 2}\\n\')\n'
    "    except OSError:\n        pass\n",
    "__eq__ always true": "    class Yes:\n"
    "        def __eq__(self, other):\n            return True\n"
    "        __hash__ = object.__hash__\n    return Yes()\n",
    "int subclass equal to all": "    class Yes(int):\n"
    "        def __eq__(self, other):\n            return True\n"
    "        __hash__ = int.__hash__\n    return Yes(7)\n",
    # Processes: spawning, leaving the group, outliving the run.
    "os.posix_spawn": "    import os\n    os.posix_spawn('/usr/bin/sleep', ['sleep', '60'], {})\n"
    + WRONG,
    "_posixsubprocess.fork_exec": "    import _posixsubprocess, os\n    r, w = os.pipe()\n"
    "    _posixsubprocess.fork_exec([b'/usr/bin/sleep', b'60'], [b'/usr/bin/sleep'], True, (),"
    " None, None, -1, -1, -1, -1, -1, -1, r, w, False, True, -1, None, None, None, -1, None,"
    " False)\n" + WRONG,
    "ctypes fork": "    import ctypes\n    ctypes.CDLL(None).fork()\n" + WRONG,
    "setsid and double fork": "    import os, time\n    if os.fork() == 0:\n        os.setsid()\n"
    "        if os.fork() == 0:\n            time.sleep(60)\n        os._exit(0)\n" + WRONG,
    # Files.
    "write after chdir": "    import os\n    os.chdir('/')\n"
    "    open('escape.txt', 'w').write('x')\n" + WRONG,
    "write through dir_fd": "    import os\n    fd = os.open('/', os.O_RDONLY)\n"
    "    os.close(os.open('escape.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd))\n" + WRONG,
    "write through a symlink": "    import os\n    os.symlink('/', 'up')\n"
    "    open('up/escape.txt', 'w').write('x')\n" + WRONG,
    "write to the host's paths": "    for p in ('/tmp/escape.txt', CANARY + '/escape.txt'):\n"
    "        try:\n            open(p, 'w').write('x')\n        except OSError as e:\n"
    "            print(e)\n" + WRONG,
    # The parent's environment.
    "/proc/ppid/environ": "    import os\n"
    "    print(open(f'/proc/{os.getppid()}/environ').read())\n" + WRONG,
    "/proc environ through dir_fd": "    import os\n    d = os.open('/proc', os.O_RDONLY)\n"
    "    for pid in ('1', '2', str(os.getppid())):\n        try:\n"
    "            print(os.read(os.open(pid + '/environ', os.O_RDONLY, dir_fd=d), 10**6))\n"
    "        except OSError as e:\n            print(e)\n"
    "    print(dict(os.environ))\n    return str(os.environ)\n",
    # The classics.
    "infinite loop": "    while True:\n        pass\n",
    "fork bomb": "    import os\n    while True:\n        os.fork()\n",
    "thread bomb": "    import threading, time\n    while True:\n"
    "        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n",
    "memory bomb": "    x = [bytearray(2**20)]\n    while True:\n"
    "        x.append(bytearray(2**24))\n",
    "disk bomb": "    k = 0\n    while True:\n"
    "        open(f'f{k}', 'wb').write(b'x' * 2**20)\n        k += 1\n",
    "output flood": "    import sys\n    while True:\n        sys.stdout.write('x' * 2**20)\n",
    "network": "    import socket\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n"
    + WRONG,
    "raw socket module": "    import _socket\n    s = _socket.socket()\n"
    "    s.connect(('127.0.0.1', 22))\n" + WRONG,
    "sys.exit(0)": "    import sys\n    sys.exit(0)\n",
    "sys.exit(0) at module level": WRONG + "import sys\nsys.exit(0)\n",
    "os._exit(0)": "    import os\n    os._exit(0)\n",
    "kill the parent": "    import os, signal\n    for pid in (os.getppid(), 1, -1):\n"
    "        try:\n            os.kill(pid, signal.SIGKILL)\n        except OSError as e:\n"
    "            print(e)\n" + WRONG,
}

# Round three: every one of these returns the right sum only when its attack worked, so a
# breach is a pass (and fails the test); contained, it raises or returns nothing.
NR = {n: syscall_number(n) for n in ("io_uring_setup", "bpf", "perf_event_open", "keyctl")}
NR |= {n: syscall_number(n) for n in ("userfaultfd", "clone", "memfd_create")}
LIBC = "    import ctypes\n    libc = ctypes.CDLL(None, use_errno=True)\n"
BREACH = "    if ok:\n        return a + b\n    raise OSError(ctypes.get_errno(), 'refused')\n"
#: 40,000 integers that all hash to 0 (multiples of 2**61 - 1): a set of them takes
#: quadratic time to build; the line fits in the 1 MiB result limit.
COLLIDING = "[k * (2**61 - 1) for k in range(1, 40001)]"


def forged_answer(value: str, count: str = "40001") -> str:
    """Module-level code writing its own answer line (``value``: Python building the tagged
    plain data from ``ints``) to every descriptor."""
    return (
        WRONG + "import json, os\n"
        f"ints = [k * (2**61 - 1) for k in range(1, {count})]\n"
        f"line = json.dumps({{'i': 0, 'value': {value}}})\n"
        "data = ('{\"event\": \"loaded\"}\\n' + line + '\\n').encode()\n"
        "for fd in range(1, 12):\n    try:\n        os.write(fd, data)\n"
        "    except OSError:\n        pass\n"
    )


ATTACKS |= {
    "hash-colliding set answer": forged_answer("{'set': ints}"),
    "hash-colliding frozenset in a list": forged_answer("{'list': [{'frozenset': ints}]}"),
    "hash-colliding dict answer": forged_answer("{'dict': [[k, 1] for k in ints]}"),
    "hash-colliding answer past the size limit": forged_answer("{'set': ints}", "200001"),
    "memfd_create holding host memory": "    import os\n    fds = []\n"
    "    for _ in range(96):\n        fd = os.memfd_create('hold')\n"
    "        os.pwrite(fd, b'x' * 2**21, 0)\n        fds.append(fd)\n    return a + b\n",
    "memfd_create through ctypes": LIBC
    + f"    ok = libc.syscall({NR['memfd_create']}, b'hold', 0) >= 0\n"
    + BREACH,
    "fallocate KEEP_SIZE on stdout": LIBC
    + "    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]\n"
    "    ok = libc.fallocate(1, 1, 0, 2**31) == 0\n" + BREACH,
    "posix_fallocate on stderr and a work file": "    import os\n"
    "    fd = os.open('big', os.O_RDWR | os.O_CREAT)\n"
    "    for f in (2, fd):\n        try:\n            os.posix_fallocate(f, 0, 2**20)\n"
    "            return a + b\n        except OSError:\n            pass\n",
    "files in /dev/shm and /dev": "    n = 0\n    for d in ('/dev/shm', '/dev'):\n"
    "        try:\n            open(d + '/hold', 'wb').write(b'x' * 2**20)\n            n += 1\n"
    "        except OSError:\n            pass\n"
    "    if n:\n        return a + b\n    raise OSError('refused')\n",
    "set-id bits on stdout": "    import os\n    os.fchmod(1, 0o6755)\n    return a + b\n",
    "set-id file in the work folder": "    import os\n    open('s', 'w').close()\n"
    "    os.chmod('s', 0o4755)\n    return a + b\n",
    "audit hook switched off, then namespaces, ptrace, io_uring": "    try:\n"
    "        open('/x_escape', 'w')\n    except Exception as e:\n"
    "        tb = e.__traceback__\n        while tb is not None:\n"
    "            if 'deny' in tb.tb_frame.f_locals:\n"
    "                tb.tb_frame.f_locals['deny'].__code__ = (lambda event: None).__code__\n"
    "            tb = tb.tb_next\n"
    + LIBC
    + "    ok = libc.unshare(0x10000000) == 0\n    ok |= libc.ptrace(16, 1, 0, 0) == 0\n"
    f"    ok |= libc.syscall({NR['io_uring_setup']}, 4, ctypes.create_string_buffer(120)) >= 0\n"
    + BREACH,
    "nested user namespace": LIBC + "    ok = libc.unshare(0x10000000) == 0\n" + BREACH,
    "setns into a namespace": LIBC + "    import os\n"
    "    ok = libc.setns(os.open('/proc/self/ns/net', os.O_RDONLY), 0) == 0\n" + BREACH,
    "clone with namespace flags": LIBC + "    import os\n"
    f"    pid = libc.syscall({NR['clone']}, 0x10000000 | 0x40000000 | 17, 0, 0, 0, 0)\n"
    "    if pid == 0:\n        os._exit(0)\n    ok = pid > 0\n" + BREACH,
    "ptrace of pid 1": LIBC + "    ok = libc.ptrace(16, 1, 0, 0) == 0\n" + BREACH,
    "mount a tmpfs": LIBC
    + "    ok = libc.mount(b'none', b'/sandbox', b'tmpfs', 0, None) == 0\n"
    + BREACH,
    "io_uring": LIBC
    + f"    ok = libc.syscall({NR['io_uring_setup']}, 4, ctypes.create_string_buffer(120)) >= 0\n"
    + BREACH,
    "bpf": LIBC
    + f"    ok = libc.syscall({NR['bpf']}, 0, ctypes.create_string_buffer(128), 128) >= 0\n"
    + BREACH,
    "perf_event_open": LIBC + "    attr = ctypes.create_string_buffer(128)\n"
    f"    ok = libc.syscall({NR['perf_event_open']}, attr, 0, -1, -1, 0) >= 0\n" + BREACH,
    "keyctl": LIBC + f"    ok = libc.syscall({NR['keyctl']}, 0, -3, 0) >= 0\n" + BREACH,
    "userfaultfd": LIBC + f"    ok = libc.syscall({NR['userfaultfd']}, 0) >= 0\n" + BREACH,
    "thread bomb with 32 KiB stacks": "    import threading, time\n"
    "    threading.stack_size(32768)\n    n = 0\n    try:\n        while n < 3000:\n"
    "            threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
    "            n += 1\n    except RuntimeError:\n        pass\n"
    "    if n > 200:\n        return a + b\n    raise RuntimeError(f'{n} threads')\n",
}

#: Attacks also tried on the judged path (the rest only concern the program's own sandbox).
JUDGED_TOO = [
    "json.dumps at module level",
    "result encoder replaced",
    "frames walked to the harness",
    "forged result lines",
    "__eq__ always true",
    "int subclass equal to all",
    "_posixsubprocess.fork_exec",
    "/proc environ through dir_fd",
    "infinite loop",
    "output flood",
    "sys.exit(0)",
    "kill the parent",
    "hash-colliding set answer",
    "hash-colliding dict answer",
    "audit hook switched off, then namespaces, ptrace, io_uring",
    "thread bomb with 32 KiB stacks",
]


def problem(test: str) -> dict:
    setup, tests = split_check_tests(test, "add")
    checks = parse_check(test, "add")
    meta = {"entry_point": "add", "program_prefix": PROMPT, "setup": setup, "tests": tests}
    return {**meta, "checks": checks}


def live_children() -> list[int]:
    """Our child processes (orphans are re-parented to us: see ``subreaper``), zombies reaped."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            if fields[0] == "Z":
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(int(entry.name), os.WNOHANG)
            else:
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def subreaper() -> Iterator[None]:
    """Make this process the reaper of orphaned descendants, so that a process that escaped
    its run would show up as our child."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    yield
    libc.prctl(36, 0, 0, 0, 0)


@pytest.fixture
def guarded(
    subreaper: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, Path]]:
    """A canary folder, a private temporary root, a secret in our environment; after the test,
    the folder and root are as they were and no child process is left."""
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep.txt").write_text("keep me")
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))
    monkeypatch.setenv("MARLHF_TEST_SECRET", SECRET)
    assert live_children() == []
    yield canary, temp_root
    assert sorted(p.name for p in canary.iterdir()) == ["keep.txt"]
    assert (canary / "keep.txt").read_text() == "keep me"
    assert list(temp_root.iterdir()) == [], "a run left its temporary folder"
    deadline = time.monotonic() + 3.0
    while live_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_children() == [], "a process outlived its run"
    assert not Path("/tmp/escape.txt").exists() and not Path("/escape.txt").exists()


def judge(body: str, test: str, canary: Path, limits: SandboxLimits = LIMITS) -> SandboxResult:
    reward = CodeExecutionReward(limits=limits)
    program = PROMPT + body.replace("CANARY", repr(str(canary)))
    start = time.perf_counter()
    result = reward.judge(program, problem(test))
    assert time.perf_counter() - start < limits.timeout_s + SLACK_S, result
    assert result.status is not Status.PASSED and result.passed < result.total, result
    assert SECRET not in result.stdout + result.stderr + result.error
    return result


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_is_contained(name: str, guarded: tuple[Path, Path]) -> None:
    judge(ATTACKS[name], STRUCTURED, guarded[0])


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_is_contained_without_the_audit_hook(name: str, guarded: tuple[Path, Path]) -> None:
    """The hook is defence in depth: with it off, the namespaces, the seccomp filter and the
    rlimits contain every attack on their own."""
    judge(ATTACKS[name], STRUCTURED, guarded[0], dataclasses.replace(LIMITS, audit_hook=False))


@pytest.mark.parametrize("name", JUDGED_TOO)
def test_attack_on_the_judged_path_is_contained(name: str, guarded: tuple[Path, Path]) -> None:
    assert problem(JUDGED)["checks"] is None  # this check really takes the judged path
    judge(ATTACKS[name], JUDGED, guarded[0])


@pytest.mark.parametrize("name", ["setsid and double fork", "_posixsubprocess.fork_exec"])
def test_processes_die_with_the_run_even_when_allowed(
    name: str, guarded: tuple[Path, Path]
) -> None:
    """With process creation allowed (no seccomp filter), a daemonised grandchild still ends
    with the run's PID namespace (``guarded`` checks that none is left)."""
    allowed = dataclasses.replace(LIMITS, allow_subprocess=True)
    result = judge(ATTACKS[name], STRUCTURED, guarded[0], allowed)
    assert result.status is Status.FAILED  # it ran, spawned, and returned the wrong sum


NAMED = (
    "def check(candidate):\n    assert candidate(1, 1) == add(1, 1)\n"
    "    for x in range(2):\n        assert candidate(x, 2) == add(x, 2)\n"
)


@pytest.mark.parametrize("audit_hook", [True, False])
def test_a_check_that_names_the_entry_point_compares_with_the_reference(
    audit_hook: bool, guarded: tuple[Path, Path]
) -> None:
    """HumanEval/33's shape: the check calls ``add`` by name. Its value comes from the trusted
    reference; without one such a call is an error (the prompt's stub would return None), and
    in no case is it the program's own function answering for itself."""
    reward = CodeExecutionReward(limits=dataclasses.replace(LIMITS, audit_hook=audit_hook))
    meta = problem(NAMED) | {"reference": PROMPT + "    return a + b\n"}
    for body in ("    return -7\n", "    return None\n", WRONG):
        for case in (meta, problem(NAMED)):
            result = reward.judge(PROMPT + body, case)
            assert result.passed == 0 and result.status is not Status.PASSED, (body, result)
    right = reward.judge(PROMPT + "    return a + b\n", meta)
    assert right.status is Status.PASSED and right.passed == 2, right


def test_honest_programs_still_pass(guarded: tuple[Path, Path]) -> None:
    reward = CodeExecutionReward(limits=LIMITS)
    for test in (STRUCTURED, JUDGED):
        result = reward.judge(PROMPT + "    return a + b\n", problem(test))
        assert result.status is Status.PASSED and result.passed == result.total >= 1, result


def test_unsafe_mode_is_named_and_the_default_needs_bwrap(guarded: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="unsafe-no-isolation"):
        SandboxLimits(isolation="none")
    unsafe = dataclasses.replace(LIMITS, isolation="unsafe-no-isolation")
    for test in (STRUCTURED, JUDGED):
        result = CodeExecutionReward(limits=unsafe).judge(PROMPT + WRONG, problem(test))
        assert result.status is Status.FAILED and result.passed == 0, result
        result = CodeExecutionReward(limits=unsafe).judge(
            PROMPT + "    return a + b\n", problem(test)
        )
        assert result.status is Status.PASSED, result


def test_missing_bwrap_refuses_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import marlhf.envs.coding.process as process

    monkeypatch.setattr(process.shutil, "which", lambda name: None)
    with pytest.raises(process.SandboxUnavailableError, match="apt-get install -y bubblewrap"):
        CodeExecutionReward()
    CodeExecutionReward(limits=SandboxLimits(isolation="unsafe-no-isolation"))  # named: allowed


def our_cgroups() -> list[str]:
    """The cgroups this process made that still exist (runs remove theirs)."""
    layout = sandbox_cgroup._probe()[0]
    if layout is None:
        return []
    prefix = f"{sandbox_cgroup.PREFIX}{os.getpid()}-"
    bases = {layout.memory_base, layout.pids_base}
    return sorted(f.name for base in bases for f in base.iterdir() if f.name.startswith(prefix))


def _shm_files() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def _our_pids() -> set[int]:
    """This process and its descendants (a sandbox worker still closing down counts as ours)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        children.setdefault(ppid, []).append(int(entry))
    ours, todo = set(), [os.getpid()]
    while todo:
        pid = todo.pop()
        ours.add(pid)
        todo.extend(children.get(pid, []))
    return ours


def _held_by_others(names: set[str]) -> set[str]:
    """The shared-memory files among ``names`` that another process (not ours) has mapped: another
    test worker's multiprocessing semaphores live in ``/dev/shm`` as long as its pool does. A
    mapping shows the name the file was made under (glibc links a temporary file to the
    semaphore's name), so files are matched by inode."""
    inodes: dict[int, str] = {}
    for name in names:
        try:
            inodes[os.stat(f"/dev/shm/{name}").st_ino] = name
        except OSError:
            continue  # removed meanwhile
    ours, held = _our_pids(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in ours:
            continue
        try:
            with open(f"/proc/{entry}/maps") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/dev/shm/"):
                held_name = inodes.get(int(fields[4]))
                if held_name is not None:
                    held.add(held_name)
    return held


def score_and_check_nothing_is_left(programs: list[str], meta: dict) -> list[SandboxResult]:
    """Score ``programs`` through the reward (2 workers) and check that no descriptor, cgroup or
    shared-memory file is left (``guarded`` checks processes and temporary folders)."""
    fds = sorted(os.listdir("/proc/self/fd"))
    shm = _shm_files()
    reward = CodeExecutionReward(limits=LIMITS, max_workers=2)
    results = reward.run(programs, [meta] * len(programs))
    assert sorted(os.listdir("/proc/self/fd")) == fds
    # No shared-memory file of its own is left. /dev/shm is the machine's: files of other
    # processes (another test worker's multiprocessing semaphores) come and go meanwhile, so
    # only a new file that stays and that no other process holds counts.
    deadline = time.monotonic() + 5.0
    while (new := _shm_files() - set(shm) - _held_by_others(_shm_files())) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert sorted(new) == []
    assert our_cgroups() == []
    return results


def test_scoring_many_programs_leaves_nothing_behind(guarded: tuple[Path, Path]) -> None:
    """The suite's scaled form of the 1,000-program check below: 24 programs of every kind
    (honest, wrong, crashing, threads, a flood, a memory bomb, hash-colliding answers)."""
    kinds = [
        "    return a + b\n",
        WRONG,
        "    raise ValueError('no')\n",
        ATTACKS["thread bomb with 32 KiB stacks"],
        ATTACKS["output flood"],
        ATTACKS["memory bomb"],
        ATTACKS["hash-colliding set answer"],
        ATTACKS["memfd_create holding host memory"],
    ]
    programs = [PROMPT + kinds[k % len(kinds)] for k in range(24)]
    results = score_and_check_nothing_is_left(programs, problem(STRUCTURED))
    assert [r.status for r in results[:3]] == [Status.PASSED, Status.FAILED, Status.RUNTIME_ERROR]
    assert sum(r.status is Status.PASSED for r in results) == 3


@pytest.mark.slow
def test_scoring_a_thousand_programs_leaves_nothing_behind(guarded: tuple[Path, Path]) -> None:
    programs = [PROMPT + f"    return a + b + {k % 2}\n" for k in range(1000)]
    results = score_and_check_nothing_is_left(programs, problem(STRUCTURED))
    assert [r.status for r in results] == [Status.PASSED, Status.FAILED] * 500
    assert run_calls("def f():\n    return 1\n", "f", [((), {})]).results[0].value == 1
