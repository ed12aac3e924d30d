"""Run a unit's ExecStart the way systemd would, as far as a test can without systemd as PID 1, so that a test
checks the unit `labgate install` writes rather than a hand-written copy of its settings.

Read from the unit and applied, in three stages that exec one another (one pid throughout):

1. `mounts` (root, in the namespace `ip netns exec` made): UMask, LimitNOFILE; ProtectSystem=strict (every mount
   read-only but /proc, /sys and /dev), ReadWritePaths (read-write again), PrivateTmp (a fresh /tmp and /var/tmp)
   and ProtectHome=yes (/home, /root, /run/user empty and read-only);
2. `setpriv`: User, Group (with its supplementary groups), AmbientCapabilities (inheritable too, as systemd
   does), CapabilityBoundingSet, NoNewPrivileges;
3. `seccomp` (as the user): SystemCallFilter (allow list, then `~` deny lists, groups expanded by
   `systemd-analyze syscall-filter`), SystemCallErrorNumber, RestrictAddressFamilies, RestrictNamespaces (clone,
   unshare and setns flags; clone3 gets ENOSYS as under systemd) and MemoryDenyWriteExecute (systemd 252's
   seccomp rules), through libseccomp; then the ExecStart command.

Paths the unit names (ExecStart's arguments, ReadWritePaths) are taken inside the staged tree `root`. Not
reproduced, and so only checked by `systemd-analyze verify`: PrivateDevices, PrivateMounts, ProtectKernel*,
ProtectControlGroups, ProtectClock, ProtectHostname, ProtectProc, LockPersonality, RestrictRealtime,
RestrictSUIDSGID, RemoveIPC, SystemCallArchitectures, StateDirectory and LogsDirectory.

Standard library only: the `seccomp` stage runs under an interpreter the unit's user can run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import pwd
import resource
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
CHECKOUT = HERE.parents[2]
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
FAMILIES = {"AF_UNIX": socket.AF_UNIX, "AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6,
            "AF_NETLINK": socket.AF_NETLINK, "AF_PACKET": getattr(socket, "AF_PACKET", 17)}
# clone(2) namespace flags; RestrictNamespaces lists the allowed ones by name.
NAMESPACE_FLAGS = {"mnt": 0x00020000, "cgroup": 0x02000000, "uts": 0x04000000, "ipc": 0x08000000,
                   "user": 0x10000000, "pid": 0x20000000, "net": 0x40000000}


# --- reading the unit ----------------------------------------------------------------------------------------------
def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}; comments and blank lines skipped (no line continuations: the units
    labgate writes have none)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"unit line outside a section or without '=': {raw!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def last(service: dict[str, list[str]], key: str, default: str | None = None) -> str | None:
    values = service.get(key)
    return values[-1] if values else default


def words(service: dict[str, list[str]], key: str) -> list[str]:
    """A list setting (AmbientCapabilities=, ReadWritePaths=, ...): every line's words, in order."""
    return [w for value in service.get(key, []) for w in value.split()]


def yes(service: dict[str, list[str]], key: str) -> bool:
    return (last(service, key) or "no").lower() in ("yes", "true", "on", "1", "strict", "full")


def syscall_group(name: str, _seen: dict[str, set[str]] | None = None) -> set[str]:
    """The system calls of a systemd group such as @system-service, nested groups expanded."""
    seen = {} if _seen is None else _seen
    if name in seen:
        return seen[name]
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True,
                         check=True).stdout
    members: set[str] = set()
    seen[name] = members
    for line in out.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        members |= syscall_group(item, seen) if item.startswith("@") else {item}
    return members


def syscall_filter(service: dict[str, list[str]]) -> list[str] | None:
    """The allowed system calls (None: no filter), as systemd combines SystemCallFilter= lines: the first line an
    allow list (unless it starts with ~), later ~lines taken out of it."""
    lines = service.get("SystemCallFilter", [])
    if not lines:
        return None
    assert not lines[0].startswith("~"), "a deny-list-only filter is not reproduced here"
    cache: dict[str, set[str]] = {}

    def expand(items: list[str]) -> set[str]:
        return set().union(*[syscall_group(i, cache) if i.startswith("@") else {i} for i in items])

    allowed: set[str] = set()
    for value in lines:
        if value.startswith("~"):
            allowed -= expand(value[1:].split())
        else:
            allowed |= expand(value.split())
    return sorted(allowed)


def policy(unit: Path, root: Path, python: str, env: dict[str, str] | None = None) -> dict:
    """Everything the three stages need, from the unit file at `unit` of the tree `root`, as JSON-able data.
    `python` runs the seccomp stage as the unit's user; `env` is added to systemd's environment (as a drop-in's
    Environment= would)."""
    service = parse_unit(unit.read_text())["Service"]
    user = last(service, "User")
    assert user, "the unit names no User="
    entry = pwd.getpwnam(user)
    argv = shlex.split(last(service, "ExecStart") or "")
    assert argv and os.path.isabs(argv[0]), f"ExecStart must start with an absolute path: {argv}"

    def inside(word: str) -> str:  # /etc/labgate/labgate.toml -> <root>/etc/labgate/labgate.toml
        staged = root / word.lstrip("/")
        return str(staged) if word.startswith("/") and word != argv[0] and staged.exists() else word

    nofile = last(service, "LimitNOFILE")
    umask = last(service, "UMask")
    namespaces = last(service, "RestrictNamespaces")
    return {
        "user": user,
        "group": last(service, "Group") or user,
        "ambient": [c.lower().removeprefix("cap_") for c in words(service, "AmbientCapabilities")],
        "bounding": [c.lower().removeprefix("cap_") for c in words(service, "CapabilityBoundingSet")],
        "no_new_privileges": yes(service, "NoNewPrivileges"),
        "umask": int(umask, 8) if umask else 0o022,
        "nofile": int(nofile) if nofile else None,
        "protect_system": last(service, "ProtectSystem"),
        "read_write_paths": [str(root / p.lstrip("-").lstrip("/")) for p in words(service, "ReadWritePaths")],
        "private_tmp": yes(service, "PrivateTmp"),
        "protect_home": last(service, "ProtectHome") in ("yes", "true"),
        # Kept visible through PrivateTmp: the test's folder, and this checkout when it lives under /tmp (a CI
        # clone): a packaged labgate is never installed there, and its Python must still be found.
        "hold": [str(root.parent), *([str(CHECKOUT)] if str(CHECKOUT).startswith(("/tmp/", "/var/tmp/")) else [])],
        "syscalls": syscall_filter(service),
        "errno": last(service, "SystemCallErrorNumber", "EPERM"),
        "families": words(service, "RestrictAddressFamilies") or None,
        "namespaces": None if namespaces is None else namespaces.split(),
        "deny_write_execute": yes(service, "MemoryDenyWriteExecute"),
        "python": python,
        "argv": [argv[0], *map(inside, argv[1:])],
        "env": {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8", "HOME": entry.pw_dir, "USER": user, "LOGNAME": user,
                "SHELL": entry.pw_shell, **(env or {})},
    }


def command(policy_file: Path, netns: str) -> tuple[list[str], dict[str, str]]:
    """argv and environment for subprocess.Popen: the unit's command, sandboxed, inside network namespace
    `netns` (as NetworkNamespacePath= would put it). Needs root."""
    data = json.loads(policy_file.read_text())
    ip = shutil.which("ip") or "/usr/sbin/ip"
    return [ip, "netns", "exec", netns, sys.executable, str(HERE), "mounts", str(policy_file)], data["env"]


# --- stage 1: mounts and limits (root) -------------------------------------------------------------------------
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_BIND, MS_MOVE, MS_REC = 0x1, 0x2, 0x4, 0x1000, 0x2000, 0x4000
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 0x1
SYS_MOUNT_SETATTR = 442  # x86_64 and aarch64 alike (a new system call: one number everywhere)


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                       data.encode() if data else None), f"mount {source} {target}")


def _read_only(path: str, on: bool, recursive: bool = True) -> None:
    attr = MountAttr(attr_set=MOUNT_ATTR_RDONLY if on else 0, attr_clr=0 if on else MOUNT_ATTR_RDONLY)
    _check(_libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), AT_RECURSIVE if recursive else 0,
                         ctypes.byref(attr), ctypes.sizeof(attr)), f"mount_setattr {path}")


def stage_mounts(data: dict) -> None:
    os.umask(data["umask"])
    if data["nofile"]:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (data["nofile"], data["nofile"]))
        except (ValueError, OSError):  # no CAP_SYS_RESOURCE here (a container): as high as this host allows
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(data["nofile"], hard), min(data["nofile"], hard)))
    if data["protect_system"] == "strict":
        # The test's folders (the staged tree, this policy; a checkout under /tmp) are held aside while /tmp is
        # replaced, each on a spare mount point, then put back.
        holds = data["hold"]
        spares = [p for p in ("/mnt", "/srv", "/opt", "/media") if os.path.isdir(p)][:len(holds)]
        assert len(spares) == len(holds), f"not enough spare mount points for {holds}"
        for hold, spare in zip(holds, spares):
            _mount(hold, spare, None, MS_BIND | MS_REC)
        _read_only("/", True)
        for path in ("/proc", "/sys", "/dev"):
            _read_only(path, False)
        if data["private_tmp"]:
            for path in ("/tmp", "/var/tmp"):
                _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
        for hold, spare in zip(holds, spares):
            os.makedirs(hold, mode=0o755, exist_ok=True)
            _mount(spare, hold, None, MS_MOVE)
        for path in data["read_write_paths"]:
            _mount(path, path, None, MS_BIND)
            _read_only(path, False, recursive=False)
    if data["protect_home"]:
        for path in ("/home", "/root", "/run/user"):
            if os.path.isdir(path):
                _mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "mode=000")
    caps = lambda names: ",".join(["-all", *(f"+{n}" for n in names)])  # noqa: E731
    setpriv = [shutil.which("setpriv") or "/usr/bin/setpriv", f"--reuid={data['user']}",
               f"--regid={data['group']}", "--init-groups", f"--inh-caps={caps(data['ambient'])}",
               f"--ambient-caps={caps(data['ambient'])}", f"--bounding-set={caps(data['bounding'])}"]
    if data["no_new_privileges"]:
        setpriv.append("--no-new-privs")
    policy_file = sys.argv[2]
    os.execv(setpriv[0], [*setpriv, "--", data["python"], "-I", "-S", str(HERE), "seccomp", policy_file])


# --- stage 3: the system call filter (as the user) -------------------------------------------------------------
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ, SCMP_CMP_MASKED_EQ = 4, 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000


def scmp_act_errno(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def stage_seccomp(data: dict) -> None:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    denied = scmp_act_errno(getattr(errno, data["errno"]))
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW if data["syscalls"] is None else denied)
    assert ctx, "seccomp_init failed"

    def rule(action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # not a system call of this architecture
            return
        array = (ArgCmp * len(cmps))(*[ArgCmp(*c) for c in cmps]) if cmps else None
        result = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)
        assert result in (0, -errno.EEXIST), f"seccomp rule for {name}: {os.strerror(-result)}"

    # System calls whose arguments decide: (name -> [argument comparisons, any of which allows it]).
    conditional: dict[str, list[tuple[tuple[int, int, int, int], ...]]] = {}
    if data["families"] is not None:
        conditional["socket"] = [((0, SCMP_CMP_EQ, FAMILIES[f], 0),) for f in data["families"]]
    if data["namespaces"] is not None:
        allowed = sum(NAMESPACE_FLAGS[n] for n in data["namespaces"])
        forbidden = sum(NAMESPACE_FLAGS.values()) & ~allowed
        conditional["clone"] = [((0, SCMP_CMP_MASKED_EQ, forbidden, 0),)]
        conditional["unshare"] = [((0, SCMP_CMP_MASKED_EQ, forbidden, 0),)]
        conditional["setns"] = [((1, SCMP_CMP_EQ, flag, 0),) for name, flag in NAMESPACE_FLAGS.items()
                                if name in data["namespaces"]]
        conditional["clone3"] = []  # its flags are in memory seccomp cannot read: systemd answers ENOSYS
        rule(scmp_act_errno(errno.ENOSYS), "clone3")
    if data["deny_write_execute"]:
        wx = PROT_WRITE | PROT_EXEC
        conditional["mmap"] = [((2, SCMP_CMP_MASKED_EQ, wx, v),) for v in (0, PROT_WRITE, PROT_EXEC)]
        for name in ("mprotect", "pkey_mprotect"):
            conditional[name] = [((2, SCMP_CMP_MASKED_EQ, PROT_EXEC, 0),)]
        conditional["shmat"] = [((2, SCMP_CMP_MASKED_EQ, SHM_EXEC, 0),)]
    names = data["syscalls"] if data["syscalls"] is not None else []
    for name in names:
        if name not in conditional:
            rule(SCMP_ACT_ALLOW, name)
    for name, alternatives in conditional.items():
        if data["syscalls"] is not None and name not in data["syscalls"]:
            continue
        for cmps in alternatives:
            rule(SCMP_ACT_ALLOW, name, *cmps)
        if data["syscalls"] is None and alternatives:
            # Without an allow list, the default allows: what no alternative allows must be refused.
            raise NotImplementedError("argument filters without SystemCallFilter= are not reproduced")
    assert lib.seccomp_load(ctx) == 0, "seccomp_load failed"
    os.execv(data["argv"][0], data["argv"])


if __name__ == "__main__":
    stage, policy_path = sys.argv[1], sys.argv[2]
    policy_data = json.loads(Path(policy_path).read_text())
    {"mounts": stage_mounts, "seccomp": stage_seccomp}[stage](policy_data)
