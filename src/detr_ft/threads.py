"""``in_threads``: a list comprehension spread over a few threads when the list is long.

For work that mostly waits on file reads (checking thousands of image files): threads
overlap those waits, while a few hundred files, most likely cached, would only contend
for the GIL and stay in the calling thread.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

THREADS = 4  # file checks are mostly reads: threads overlap their waits
THREADS_FROM = 1000  # items; below this the work runs in the calling thread


def in_threads(fn, items: list) -> list:
    """``[fn(x) for x in items]``; for many items in ``THREADS`` threads, which overlap
    the waits of files read from disk or a network (for a few hundred files, most likely
    cached, they would only contend for the GIL). One task per thread, not per item."""
    if len(items) < THREADS_FROM:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        chunks = list(pool.map(lambda chunk: [fn(x) for x in chunk],
                               [items[k::THREADS] for k in range(THREADS)]))
    results = [None] * len(items)
    for k, chunk in enumerate(chunks):
        results[k::THREADS] = chunk
    return results
