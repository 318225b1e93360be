"""The simulator's timed events, in numba: a binary min-heap on time in `State.h_*`.

An entry is (time `h_t`, request or key `h_r`, kind `h_kind`); `State.counts[2]` is its size.
What the kinds mean (a service completion, an error answer, a probe answer) is the kernel's
business (`envs.kernel`): the heap only orders them. It lives in the state's preallocated arrays
because the kernels cannot allocate (`envs.jit`), which is why the kernel checks for room before
an arrival rather than the heap growing itself.
"""

from __future__ import annotations

from envs.jit import jit
from envs.nb_state import State

__all__ = ["pop", "push"]


@jit
def push(st: State, t: float, r: int, kind: int) -> None:
    """Add the event (t, r, kind): sift it up from the end past every later parent."""
    i = st.counts[2]
    st.counts[2] += 1
    while i > 0:
        parent = (i - 1) >> 1
        if st.h_t[parent] <= t:
            break
        st.h_t[i], st.h_r[i], st.h_kind[i] = st.h_t[parent], st.h_r[parent], st.h_kind[parent]
        i = parent
    st.h_t[i], st.h_r[i], st.h_kind[i] = t, r, kind


@jit
def pop(st: State) -> None:
    """Drop the earliest event (slot 0; read it before): the last entry sifts down from the top."""
    size = st.counts[2] - 1
    st.counts[2] = size
    t, r, kind = st.h_t[size], st.h_r[size], st.h_kind[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and st.h_t[child + 1] < st.h_t[child]:
            child += 1
        if st.h_t[child] >= t:
            break
        st.h_t[i], st.h_r[i], st.h_kind[i] = st.h_t[child], st.h_r[child], st.h_kind[child]
        i = child
    st.h_t[i], st.h_r[i], st.h_kind[i] = t, r, kind
