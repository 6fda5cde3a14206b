"""benchmarks/_common.py: what the benchmarks' timing helper reports."""
import mmap

from benchmarks._common import interleaved

PAGE = mmap.PAGESIZE


def _touch_fresh_pages(n_pages=2048):
    """Map anonymous memory and write one byte per page: each write faults a page in."""
    m = mmap.mmap(-1, n_pages * PAGE)
    for i in range(0, n_pages * PAGE, PAGE):
        m[i] = 1
    m.close()


def _spin(seconds=0.05):
    import time

    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_interleaved_reports_wall_cpu_and_page_faults_per_call():
    result = interleaved({"touch": _touch_fresh_pages, "spin": _spin, "noop": lambda: None},
                         repeats=3)
    assert set(result) == {"touch", "spin", "noop"}
    for r in result.values():
        assert r["min_s"] <= r["median_s"] <= r["max_s"]
    # every call faults its 2048 fresh pages in; a call that touches no memory faults ~none
    assert result["touch"]["median_minor_page_faults"] >= 2048
    assert result["noop"]["median_minor_page_faults"] < 64
    # the spin burns >= 50 ms of CPU in user mode, the no-op none to speak of
    assert result["spin"]["median_user_cpu_s"] + result["spin"]["median_system_cpu_s"] >= 0.04
    assert result["noop"]["median_user_cpu_s"] < 0.02
