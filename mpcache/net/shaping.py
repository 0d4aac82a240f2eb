"""Network shaping inside the transport, and the analytic latency model.

Kernel netem is not available where mpcache runs, so the gRPC transport shapes its own
traffic: every outgoing frame on a directed link gets a *release time*

    start   = max(now, link_busy_until)        # a link sends one frame at a time
    done    = start + wire_bytes * 8 / bandwidth   # serialization delay (token bucket
    release = done + one_way_delay                 #   with a bucket of one frame)

and the link's sender thread holds the frame until then.  Frames stay in order per link.
This is what a store-and-forward link with the given rate and propagation delay does; it
ignores the (tiny) real loopback time underneath.

The *modelled* latency is the first-order estimate the design uses everywhere:
``compute + rounds x RTT + bytes / bandwidth`` (:func:`model_latency`).  ``mpcache launch``
prints it beside the measured wall time so the two can be compared.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """A network setting: link bandwidth (bit/s) and round-trip time (s)."""

    name: str
    bandwidth_bps: float
    rtt_s: float

    @property
    def delay_s(self) -> float:
        """One-way propagation delay (half the RTT)."""
        return self.rtt_s / 2

    @property
    def delay_ms(self) -> float:
        return self.delay_s * 1e3

    @property
    def bandwidth_mbps(self) -> float:
        return self.bandwidth_bps / 1e6


LAN = Preset("lan", 1e9, 0.5e-3)
WAN = Preset("wan", 100e6, 40e-3)
PRESETS = {"lan": LAN, "wan": WAN}


def get_preset(p) -> Preset:
    if isinstance(p, Preset):
        return p
    try:
        return PRESETS[str(p).lower()]
    except KeyError:
        raise ValueError(f"unknown network preset {p!r}; choose one of {sorted(PRESETS)}") \
            from None


def resolve(preset: str | None = None, delay_ms: float | None = None,
            bandwidth_mbps: float | None = None) -> Preset | None:
    """Combine a preset with explicit overrides; ``None`` means no shaping at all.

    ``preset`` may be ``"lan"``, ``"wan"`` or ``None``/``"none"``; explicit ``delay_ms``
    (one-way) and ``bandwidth_mbps`` override the preset's values (0 = unlimited).
    """
    if preset in (None, "", "none", "off") and delay_ms is None and bandwidth_mbps is None:
        return None
    off = preset in (None, "", "none", "off")
    base = Preset("custom", 0.0, 0.0) if off else get_preset(preset)
    bw = base.bandwidth_bps if bandwidth_mbps is None else float(bandwidth_mbps) * 1e6
    rtt = base.rtt_s if delay_ms is None else 2 * float(delay_ms) / 1e3
    if bw < 0 or rtt < 0:
        raise ValueError("delay and bandwidth must be >= 0")
    if bw == 0 and rtt == 0:
        return None
    name = base.name if (delay_ms is None and bandwidth_mbps is None) else "custom"
    return Preset(name, bw, rtt)


class LinkShaper:
    """Release times for the frames of one directed link (thread-safe)."""

    def __init__(self, preset: Preset):
        self.delay_s = preset.delay_s
        self.bandwidth_bps = preset.bandwidth_bps
        self._busy_until = 0.0
        self._lock = threading.Lock()

    def schedule(self, nbytes: int, now: float | None = None) -> float:
        """Return the ``time.monotonic()`` instant at which ``nbytes`` may be handed on."""
        now = time.monotonic() if now is None else now
        with self._lock:
            start = max(now, self._busy_until)
            done = start + (nbytes * 8 / self.bandwidth_bps if self.bandwidth_bps else 0.0)
            self._busy_until = done
        return done + self.delay_s


def model_latency(compute_s: float, rounds: int, nbytes: int, preset) -> float:
    """Modelled wall time: ``compute + rounds x RTT/2 + bytes / bandwidth`` (seconds).

    A *round* in mpcache's accounting is one sequential message hop (a send and the
    receive that waits for it), and a hop costs one one-way delay, i.e. RTT/2.  (The
    usual "rounds x RTT" counts request/response round trips, two hops each; applied to
    hop counts it doubles the latency term: measured softmax 12x1024 under the WAN
    preset took 2.5 s where rounds x RTT predicted 4.3 s and rounds x RTT/2 2.5 s.)
    ``nbytes`` is the traffic of the busiest party; ``preset`` is a :class:`Preset` or a
    name (``"lan"``, ``"wan"``).  Unlimited bandwidth (0) contributes nothing.
    """
    p = get_preset(preset)
    bw_term = nbytes * 8 / p.bandwidth_bps if p.bandwidth_bps else 0.0
    return float(compute_s) + rounds * p.rtt_s / 2 + bw_term


def describe_model(compute_s: float, rounds: int, nbytes: int, preset) -> str:
    p = get_preset(preset)
    bw = f"{p.bandwidth_mbps:g} Mbit/s" if p.bandwidth_bps else "inf"
    return (f"model[{p.name}: RTT {p.rtt_s * 1e3:g} ms, {bw}] = {compute_s:.3f} s compute"
            f" + {rounds} rounds x RTT/2 + {nbytes} B / bw"
            f" = {model_latency(compute_s, rounds, nbytes, p):.3f} s")
