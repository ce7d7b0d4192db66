"""Keep this process's int8 matrix products off Intel AMX (Linux x86-64 only).

onnxruntime's MLAS sends every u8 x s8 product (`DynamicQuantizeMatMul`) to its AMX kernel
whenever the CPU has AMX-INT8 and Linux grants the process the tile state. AMX works on tiles
of 16 rows, so on the 1-4 rows of a decoder step at batch 1 it is slower than MLAS's own
AVX-512 VNNI kernel (`benchmarks/int8_rows.py`: most of all for a wide output projection);
at 16 rows AMX wins. onnxruntime has no
switch for this. MLAS asks the kernel for the tile state once, with
`arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`, and falls back to VNNI when that is refused, so
`deny_amx()` installs a seccomp filter that refuses exactly that call (EPERM) for every thread
of the process, before onnxruntime first runs. Nothing else is filtered; a filter cannot be
removed, so this is for processes that only decode (the bench's workers, `wdctl translate`).
"""

from __future__ import annotations

import ctypes
import errno
import platform
import sys

from wdctl.core.runinfo import cpu_info

_SYS_ARCH_PRCTL = 158  # x86-64 syscall numbers
_SYS_SECCOMP = 317
_ARCH_GET_XCOMP_PERM = 0x1022
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_MASK_XTILEDATA = 1 << 18
_AUDIT_ARCH_X86_64 = 0xC000003E
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_TSYNC = 1
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000


class _Instruction(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Instruction))]


def _filter() -> list[tuple[int, int, int, int]]:
    """Classic BPF over `struct seccomp_data` (nr at 0, arch at 4, args[0] at 16): refuse
    arch_prctl(ARCH_REQ_XCOMP_PERM, ...) with EPERM, allow everything else."""
    load, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_RET|K
    return [
        (load, 0, 0, 4), (jeq, 0, 5, _AUDIT_ARCH_X86_64),
        (load, 0, 0, 0), (jeq, 0, 3, _SYS_ARCH_PRCTL),
        (load, 0, 0, 16), (jeq, 0, 1, _ARCH_REQ_XCOMP_PERM),
        (ret, 0, 0, _RET_ERRNO | errno.EPERM),
        (ret, 0, 0, _RET_ALLOW),
    ]


def supported() -> bool:
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")


def cpu_has_amx() -> bool:
    return supported() and "amx_int8" in cpu_info()["isa_flags"]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def amx_granted() -> bool:
    """Whether this process already holds the AMX tile state (then a filter comes too late)."""
    if not supported():
        return False
    mask = ctypes.c_ulong(0)
    rc = _libc().syscall(_SYS_ARCH_PRCTL, _ARCH_GET_XCOMP_PERM, ctypes.byref(mask))
    return rc == 0 and bool(mask.value & _XFEATURE_MASK_XTILEDATA)


_denied = False


def state() -> str:
    """For reports: "refused" (this process filtered it), "in use" (granted: something asked
    for it), "unused" (not asked for yet) or "absent" (no AMX-INT8, or not Linux x86-64)."""
    if _denied:
        return "refused"
    if not cpu_has_amx():
        return "absent"
    return "in use" if amx_granted() else "unused"


def deny_amx() -> bool:
    """Refuse this process (all threads, and children) the AMX tile state from now on.
    Returns True when int8 products will run without AMX: the filter is in place (or was
    already) and the state was not granted before. False where the platform has no seccomp
    filters, the kernel refuses the filter, or onnxruntime (or torch) already took AMX."""
    global _denied
    if _denied:
        return True
    if not supported() or amx_granted():
        return False
    libc = _libc()
    code = _filter()
    program = (_Instruction * len(code))(*[_Instruction(*c) for c in code])
    fprog = _Program(len(code), program)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    if libc.syscall(_SYS_SECCOMP, _SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_TSYNC, ctypes.byref(fprog)) != 0:
        return False
    _denied = True
    return True
