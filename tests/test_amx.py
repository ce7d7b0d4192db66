"""Keeping few-row int8 products off Intel AMX (`wdctl.core.amx`, `settle_int8_kernels`).

A seccomp filter cannot be removed, so every test that installs one runs in a child process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from wdctl.core import amx

needs_linux_x86 = pytest.mark.skipif(not amx.supported(), reason="seccomp filters: Linux x86-64 only")


def _child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


@needs_linux_x86
def test_deny_amx_refuses_the_tile_request_and_nothing_else():
    """After deny_amx(): arch_prctl(ARCH_REQ_XCOMP_PERM) fails with EPERM in every thread,
    ordinary system calls (files, threads, a subprocess) still work."""
    proc = _child("""
        import ctypes, os, subprocess, sys, threading
        from wdctl.core import amx
        if not amx.deny_amx():
            print("NOFILTER"); sys.exit(0)
        libc = ctypes.CDLL(None, use_errno=True)
        results = []
        def request():
            results.append((libc.syscall(158, 0x1023, 18), ctypes.get_errno()))
        request()
        t = threading.Thread(target=request); t.start(); t.join()
        # ARCH_GET_XCOMP_PERM passes the filter (kernels before 5.16 answer EINVAL, not EPERM)
        get = int(libc.syscall(158, 0x1022, ctypes.byref(ctypes.c_ulong(0))) == 0 or ctypes.get_errno() != 1)
        with open(os.devnull, "w") as f:
            f.write("x")
        out = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True).stdout.strip()
        print(results, get, out, amx.state(), amx.deny_amx())
    """)
    assert proc.returncode == 0, proc.stderr
    if proc.stdout.strip() == "NOFILTER":
        pytest.skip("this kernel or container refuses seccomp filters")
    assert proc.stdout.split() == ["[(-1,", "1),", "(-1,", "1)]", "1", "42", "refused", "True"]


def test_settle_int8_kernels_refuses_amx_only_for_few_rows_on_amx_cpus(monkeypatch):
    """The policy, with the filter itself replaced: rows <= AMX_SLOWER_UP_TO_ROWS on an AMX CPU."""
    from wdctl.export.session import AMX_SLOWER_UP_TO_ROWS, settle_int8_kernels

    calls = []
    monkeypatch.setattr(amx, "deny_amx", lambda: calls.append(1) or True)
    monkeypatch.setattr(amx, "cpu_has_amx", lambda: True)
    assert settle_int8_kernels(1) and settle_int8_kernels(AMX_SLOWER_UP_TO_ROWS)
    assert not settle_int8_kernels(AMX_SLOWER_UP_TO_ROWS + 1) and not settle_int8_kernels(16)
    assert len(calls) == 2
    monkeypatch.setattr(amx, "cpu_has_amx", lambda: False)
    assert not settle_int8_kernels(1) and len(calls) == 2


def test_sentences_per_search_follows_rows_per_run():
    from wdctl.export.translator import sentences_per_search

    assert sentences_per_search(1, 1) == 1 and sentences_per_search(4, 1) == 1
    assert sentences_per_search(4, 32, 16) == 4 and sentences_per_search(1, 32, 16) == 16
    assert sentences_per_search(64, 32, 16) == 1 and sentences_per_search(4, 32, 0) == 32


def test_settle_kernels_for_search_counts_the_rows_of_one_search(monkeypatch):
    """What `wdctl translate` and the bench's in-graph worker call: rows = sentences a search x beams."""
    from wdctl.export.translator import settle_kernels_for_search

    monkeypatch.setattr(amx, "deny_amx", lambda: True)
    monkeypatch.setattr(amx, "cpu_has_amx", lambda: True)
    assert settle_kernels_for_search(1, 1) and settle_kernels_for_search(4, 1)  # 1 and 4 rows
    assert not settle_kernels_for_search(4, 32)  # searches of 4 sentences x 4 beams = 16 rows
    assert not settle_kernels_for_search(1, 32)  # 16 sentences x 1 beam
