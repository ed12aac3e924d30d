"""Execute nft text batches: in-process through libnftables (ctypes) when present, else the `nft` program.

Both run in the calling thread's network namespace; use them from a NamespaceWorker. A batch is atomic: if any
command fails, nothing changes, and NftError carries nft's own message.
"""

from __future__ import annotations

import ctypes
import errno
import json as jsonlib
import os
import shutil
import subprocess
import tempfile
import threading
from typing import Any, Protocol, Sequence

NFT_CTX_OUTPUT_JSON = 1 << 4
NFT_CTX_OUTPUT_TERSE = 1 << 11
# Descriptors that must be free before a libnftables context is created: nft_ctx_new() opens a netlink socket
# and, when it cannot (EMFILE, ENFILE), prints "Unable to initialize Netlink socket" and calls exit() - the whole
# process would end. It needs one; the margin covers other threads opening descriptors at the same moment.
NFT_CONTEXT_DESCRIPTORS = 16


class NftError(RuntimeError):
    """nft refused a batch; str() is nft's error text (which names the failing command)."""


class NftRunner(Protocol):
    def run(self, text: str, *, json: bool = False, terse: bool = False) -> str:
        """Run the batch; returns nft's output (JSON with json=True; no set elements with terse=True).
        Raises NftError when nft refuses it (nothing is then changed)."""
        ...


def check_descriptors(needed: int = NFT_CONTEXT_DESCRIPTORS) -> None:
    """Raise NftError unless `needed` descriptors can be opened now (they are opened and closed again)."""
    opened: list[int] = []
    try:
        for _ in range(needed):
            opened.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        raise NftError(f"too few file descriptors free to open a netlink socket ({exc.strerror}; "
                       f"{len(opened)} of {needed} could be opened): not calling libnftables, which would exit "
                       "the process") from None
    finally:
        for fd in opened:
            os.close(fd)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    for fn in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
        getattr(lib, fn).restype = ctypes.c_int
    for fn in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
        getattr(lib, fn).restype = ctypes.c_char_p
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    return lib


_library: ctypes.CDLL | None = None
_library_lock = threading.Lock()


def _load_library() -> ctypes.CDLL:
    """libnftables.so.1 with its prototypes, loaded once (OSError when it is not installed)."""
    global _library
    with _library_lock:
        if _library is None:
            _library = _declare(ctypes.CDLL("libnftables.so.1"))
        return _library


class LibNftables:
    """libnftables.so.1 via ctypes: ~0.3 ms per small batch instead of ~7 ms for a process.

    Creating one raises NftError instead of letting libnftables end the process when descriptors run out."""

    def __init__(self) -> None:
        lib = _load_library()
        check_descriptors()
        self._lib = lib
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._base_flags = lib.nft_ctx_output_get_flags(self._ctx)

    def run(self, text: str, *, json: bool = False, terse: bool = False) -> str:
        lib = self._lib
        flags = self._base_flags | (NFT_CTX_OUTPUT_JSON if json else 0) | (NFT_CTX_OUTPUT_TERSE if terse else 0)
        lib.nft_ctx_output_set_flags(self._ctx, flags)
        rc = lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
        out = (lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
        err = (lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
        if rc != 0:
            raise NftError(err.strip() or f"nft failed with code {rc}")
        return out

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None


NFT_BINARY = "/usr/sbin/nft"  # where Debian's nftables package puts it (PATH may lack /usr/sbin)


class NftProcess:
    """The `nft` program, fed the batch on stdin."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or shutil.which("nft") or NFT_BINARY

    def run(self, text: str, *, json: bool = False, terse: bool = False) -> str:
        return self.run_parts([text], json=json, terse=terse)

    def run_parts(self, parts: Sequence[str], *, json: bool = False, terse: bool = False) -> str:
        """One batch made of `parts`, written to nft's stdin one after the other: a whole table is never copied
        into one string and its bytes (at 50,000 forwards each copy is ~5 MB of the server's peak). Output and
        errors go to temporary files, so writing cannot block on a pipe nobody reads."""
        argv = [self.binary] + (["-j"] if json else []) + (["-t"] if terse else []) + ["-f", "-"]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err)
            except FileNotFoundError:
                raise NftError(f"{self.binary} not found: install the nftables package") from None
            try:
                try:
                    for part in parts:
                        proc.stdin.write(part.encode())
                except BrokenPipeError:
                    pass  # nft stopped reading (it failed): its exit status and errors say why
                finally:
                    try:
                        proc.stdin.close()
                    except BrokenPipeError:
                        pass
                proc.wait(timeout=120)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            out.seek(0)
            err.seek(0)
            if proc.returncode != 0:
                raise NftError(err.read().decode(errors="replace").strip() or f"nft exited {proc.returncode}")
            return out.read().decode(errors="replace")

    def close(self) -> None:
        pass


def open_runner(prefer_library: bool = True) -> NftRunner:
    """libnftables when it loads, else the nft program."""
    if prefer_library:
        try:
            return LibNftables()
        except OSError:
            pass
    return NftProcess()


def parse_json(output: str) -> list[dict[str, Any]]:
    """nft -j output -> the list under "nftables" (empty for no output)."""
    if not output.strip():
        return []
    return jsonlib.loads(output).get("nftables", [])
