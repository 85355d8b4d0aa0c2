"""B-mode image formation: scatterers → point-spread function → envelope → TGC → log → scan conversion.

The pipeline follows a scanner's signal chain in the beam domain (``(lines, samples)``,
see :mod:`arlkit.data.synthetic.geometry`):

1. *Scatterers*: white Gaussian scatterers (many per resolution cell, hence fully
   developed speckle) with amplitudes scaled by the tissue's echogenicity, plus
   coherent (specular) reflectors, all weighted by the round-trip attenuation
   accumulated along each beam — which produces posterior acoustic shadowing behind
   strong attenuators and enhancement behind fluid.
2. *Point-spread function*: a lateral Gaussian beam whose width grows away from the
   focus (depth-dependent, applied per depth sample), then the axial pulse (a Gaussian
   spectrum around the carrier), applied in the frequency domain.
3. *Envelope detection*: magnitude of the analytic signal (Hilbert transform, same FFT).
4. *Time-gain compensation* of the nominal attenuation, with imperfect operator knobs.
5. *Log compression* to a dynamic range, then 6. *scan conversion*.

Every stage can be returned (``stages=True``) so tests can check the physics, e.g. the
Rayleigh statistics of the envelope. Arrays are float32 NumPy; one image takes a few
milliseconds on one core.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from arlkit.data.synthetic.geometry import BeamGrid

__all__ = [
    "Scanner",
    "Tissue",
    "analytic_pulse",
    "attenuation_factor",
    "auto_tgc",
    "cumulative_attenuation",
    "envelope",
    "lateral_weights",
    "log_compress",
    "simulate",
]


@dataclass
class Tissue:
    """What a phantom returns: acoustic properties on the phantom grid ``(L, M)``.

    Attributes:
        echo: incoherent backscatter amplitude (1 = reference soft tissue, ~0 fluid).
        atten: round-trip attenuation in dB per unit depth (array or constant).
        specular: amplitude of coherent reflectors (capsules, pleura, bone surfaces).
        artifact: incoherent echoes that are *not* attenuated along the beam
            (ring-down artefacts such as lung B-lines).
        reverb: coherent echoes that are not attenuated (reverberations, lung A-lines).
        labels: integer segmentation labels (e.g. left ventricle = 1), or None.
        tgc: attenuation the operator compensates (dB per unit depth).
    """

    echo: np.ndarray
    atten: np.ndarray | float = 30.0
    specular: np.ndarray | None = None
    artifact: np.ndarray | None = None
    reverb: np.ndarray | None = None
    labels: np.ndarray | None = None
    tgc: float = 30.0


@dataclass(frozen=True)
class Scanner:
    """Imaging settings of one acquisition.

    Args:
        f0: carrier frequency in cycles per RF sample.
        bandwidth: fractional -6 dB bandwidth of the (Gaussian) pulse spectrum.
        focus: transmit focal depth (fraction of the imaging depth).
        beam_width: lateral PSF standard deviation at the focus, in scan lines.
        rayleigh: depth distance over which the beam widens by sqrt(2).
        gain: overall gain (dB).
        dynamic_range: displayed dynamic range (dB).
        noise: electronic noise level relative to the reference echo (dB).
        tgc_error: ``(K,)`` operator TGC knob errors (dB), spread evenly in depth.
        gamma: exponent of the display grey map (post-processing curve; >1 darkens).
        auto_tgc: how far the TGC follows the image's median attenuation (0..1).
    """

    f0: float = 0.27
    bandwidth: float = 0.75
    focus: float = 0.35
    beam_width: float = 1.0
    rayleigh: float = 0.3
    gain: float = 0.0
    dynamic_range: float = 55.0
    noise: float = -55.0
    tgc_error: tuple[float, ...] = ()
    gamma: float = 1.0
    auto_tgc: float = 0.0

    @staticmethod
    def random(rng: np.random.Generator) -> Scanner:
        """Plausible random settings (focus, beam, gain, dynamic range, TGC knobs)."""
        return Scanner(
            f0=float(rng.uniform(0.24, 0.30)),
            bandwidth=float(rng.uniform(0.6, 0.9)),
            focus=float(rng.uniform(0.25, 0.5)),
            beam_width=float(rng.uniform(0.6, 0.9)),
            rayleigh=float(rng.uniform(0.35, 0.5)),
            gain=float(rng.uniform(-6.0, 6.0)),
            dynamic_range=float(rng.uniform(45.0, 60.0)),
            noise=float(rng.uniform(-60.0, -50.0)),
            tgc_error=tuple(float(v) for v in rng.uniform(-3.0, 3.0, size=4)),
            gamma=float(rng.uniform(1.0, 1.5)),
            auto_tgc=float(rng.uniform(0.8, 1.0)),
        )


#: Headroom above the reference tissue echo before the display saturates (dB).
HEADROOM_DB = 24.0


def lateral_weights(scanner: Scanner, depth: np.ndarray, max_half: int = 8) -> np.ndarray:
    """Depth-dependent lateral PSF taps (Gaussian beam, narrowest at the focus).

    Args:
        scanner: settings (``beam_width``, ``focus``, ``rayleigh``).
        depth: ``(N,)`` sample depths.
        max_half: largest half-width of the kernel, in lines.

    Returns:
        ``(2h+1, N)`` taps per depth, normalised to unit energy (sum of squares 1) so
        that speckle brightness does not depend on the beam width.
    """
    sigma = scanner.beam_width * np.sqrt(1 + ((depth - scanner.focus) / scanner.rayleigh) ** 2)
    half = int(min(max_half, np.ceil(3 * sigma.max())))
    k = np.arange(-half, half + 1, dtype=np.float32)[:, None]
    w = np.exp(-0.5 * (k / sigma[None, :]) ** 2)  # (2h+1, N)
    return (w / np.sqrt((w**2).sum(0, keepdims=True))).astype(np.float32)


@lru_cache(maxsize=64)
def _pulse_spectrum(n_fft: int, f0: float, bandwidth: float) -> np.ndarray:
    f = np.fft.rfftfreq(n_fft).astype(np.float32)
    sigma_f = bandwidth * f0 / (2 * np.sqrt(2 * np.log(2)))  # -6 dB full width → std
    spec = np.exp(-0.5 * ((f - f0) / sigma_f) ** 2)
    spec = 2 * spec  # analytic signal: double the positive frequencies, drop the negative
    # unit energy of the analytic impulse response: E|envelope|^2 = E|input|^2
    spec /= np.sqrt((np.abs(spec) ** 2).sum() / n_fft)
    return spec.astype(np.complex64)


def analytic_pulse(n_fft: int, f0: float, bandwidth: float) -> np.ndarray:
    """Frequency response ``(n_fft // 2 + 1,)`` of the axial pulse times the Hilbert step.

    Multiplying an RF line's ``rfft`` by it and taking a full-length inverse FFT of the
    (zero-extended) result gives the *analytic* RF signal, whose magnitude is the envelope.
    """
    return _pulse_spectrum(n_fft, round(f0, 4), round(bandwidth, 4))


def cumulative_attenuation(atten: np.ndarray | float, depth: np.ndarray) -> np.ndarray:
    """Round-trip attenuation (dB) accumulated along each beam above each sample.

    Args:
        atten: ``(L, N)`` dB per unit depth, or a constant.
        depth: ``(N,)`` sample depths (uniform spacing).

    Returns:
        ``(L, N)`` (or ``(N,)`` for a constant) dB; exclusive of the sample itself, so a
        reflector's own front surface is not darkened by its attenuation.
    """
    if np.isscalar(atten):
        return (float(atten) * (depth - depth[0])).astype(np.float32)
    step = np.float32(depth[1] - depth[0])
    cum = np.cumsum(atten, axis=-1, dtype=np.float32)
    cum -= atten
    return cum * step


def attenuation_factor(cum_db: np.ndarray) -> np.ndarray:
    """Amplitude factor ``10^(-A/20)`` of a cumulative attenuation ``A`` in dB."""
    return np.power(np.float32(10.0), cum_db * np.float32(-1 / 20), dtype=np.float32)


def auto_tgc(cum_db: np.ndarray, nominal: np.ndarray, strength: float) -> np.ndarray:
    """TGC curve (dB per depth): the nominal ramp pulled towards the image's typical attenuation.

    Like a scanner's automatic gain optimisation: it follows the attenuation of the
    well-insonified lines (lower quartile, so rib, bone or stone shadows do not raise
    the gain), which keeps fluid-filled fields from saturating while local shadowing and
    enhancement remain.

    Args:
        cum_db: ``(L, N)`` or ``(N,)`` cumulative attenuation.
        nominal: ``(N,)`` nominal compensation (dB).
        strength: 0 = nominal only, 1 = follow the lower quartile fully (down by at most 30 dB,
            up by at most 6 dB: the gain is not raised into air or shadows, only noise
            would come back).
    """
    if cum_db.ndim == 1 or strength == 0:
        return nominal
    typical = np.percentile(cum_db[:: max(1, cum_db.shape[0] // 32)], 25, axis=0)
    return nominal + np.float32(strength) * np.clip(typical - nominal, -30, 6)


def envelope(rf: np.ndarray, scanner: Scanner) -> np.ndarray:
    """Axial pulse + envelope detection of beam-domain scatterers, decimated by 2.

    The analytic signal has no negative frequencies and (after the pulse) nothing above
    half the sampling rate, so its even samples are exactly the inverse FFT of the first
    half of its spectrum: half the work of a full-length Hilbert transform.

    Args:
        rf: ``(L, N)`` laterally filtered scatterer signal (``N`` even).
        scanner: carrier and bandwidth.

    Returns:
        ``(L, N // 2)`` envelope ``|analytic(pulse * rf)|`` at RF samples ``0, 2, 4, …``.
    """
    n = rf.shape[-1]
    n_fft = 1 << int(np.ceil(np.log2(n + 32)))  # margin against circular wrap-around
    spec = np.fft.rfft(rf, n=n_fft, axis=-1)[:, : n_fft // 2]
    spec *= analytic_pulse(n_fft, scanner.f0, scanner.bandwidth)[: n_fft // 2]
    iq = np.fft.ifft(spec, axis=-1)[:, : n // 2]
    env = np.abs(iq).astype(np.float32, copy=False)
    env *= np.float32(0.5)  # ifft over n_fft/2 bins normalises by 2/n_fft instead of 1/n_fft
    return env


def log_compress(env: np.ndarray, scanner: Scanner) -> np.ndarray:
    """Map envelope amplitudes to display grey levels in [0, 1].

    ``grey = clip(1 + (20 log10(env) + gain - HEADROOM_DB) / dynamic_range, 0, 1) ** gamma``:
    the reference tissue (mean envelope ~0.89) sits near 0.5, fluid near 0.
    """
    grey = np.log10(env + np.float32(1e-6))
    grey *= np.float32(20 / scanner.dynamic_range)
    grey += np.float32(1 + (scanner.gain - HEADROOM_DB) / scanner.dynamic_range)
    np.maximum(grey, 0, out=grey)
    np.minimum(grey, 1, out=grey)
    if scanner.gamma != 1.0:
        grey **= np.float32(scanner.gamma)
    return grey


def _lateral(s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-depth lateral convolution; ``s`` is padded by ``h`` lines on each side."""
    half = (w.shape[0] - 1) // 2
    lines = s.shape[0] - 2 * half
    out = s[0:lines] * w[0]
    for k in range(1, w.shape[0]):
        out += s[k : k + lines] * w[k]
    return out


def _expand(a: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Phantom grid → padded RF grid in one gather (edge lines repeated, depth repeated)."""
    if a.ndim == 1:
        return np.broadcast_to(a[cols], (rows.size, cols.size))
    return a[rows[:, None], cols[None, :]]


def simulate(
    tissue: Tissue,
    grid: BeamGrid,
    scanner: Scanner,
    rng: np.random.Generator,
    stages: bool = False,
) -> dict[str, np.ndarray]:
    """Form the B-mode image of ``tissue``.

    Args:
        tissue: acoustic maps on ``grid``'s phantom grid ``(L, M)``. ``artifact`` and
            ``reverb`` are given as they appear after the nominal TGC (they travel through
            the tissue above, so they decay like it).
        grid: beam grid and scan-conversion tables.
        scanner: acquisition settings.
        rng: source of the scatterers (and the electronic noise, folded into them: it is
            white before the receive beamformer, which correlates it across lines like
            the echoes).
        stages: also return the intermediate beam-domain arrays.

    Returns:
        ``{"image": (S, S) float32 in [0, 1], "fov": (S, S) bool}`` plus, when
        ``tissue.labels`` is set, ``"labels": (S, S) int64`` (nearest neighbour). With
        ``stages=True`` also ``"scatterers"`` and ``"rf"`` ``(L, N)``, and
        ``"envelope"`` (before TGC), ``"compensated"`` (after TGC) and ``"bmode"`` (log
        compressed), each ``(L, N / 2)``.
    """
    n, step, depth = grid.samples, grid.step, grid.depth
    w = lateral_weights(scanner, depth)
    half = (w.shape[0] - 1) // 2
    rows = np.clip(np.arange(-half, grid.lines + half), 0, grid.lines - 1)
    cols = np.arange(n) // step
    cum = cumulative_attenuation(tissue.atten, depth[::step])  # (L, M) or (M,)
    factor = attenuation_factor(cum)
    nominal = (tissue.tgc * depth[::step]).astype(np.float32)  # (M,)
    decay = attenuation_factor(nominal)  # what the TGC will undo, for the artefacts
    amp = tissue.echo * factor
    if tissue.artifact is not None:
        amp += tissue.artifact * decay
    amp = np.sqrt(amp * amp + np.float32(10 ** (scanner.noise / 10)))
    s = _expand(amp, rows, cols) * rng.standard_normal((rows.size, n), dtype=np.float32)
    coherent = None
    if tissue.specular is not None:
        coherent = tissue.specular * factor
    if tissue.reverb is not None:
        coherent = tissue.reverb * decay if coherent is None else coherent + tissue.reverb * decay
    if coherent is not None:
        s += _expand(coherent, rows, cols)
    rf = _lateral(s, w)
    env = envelope(rf, scanner)  # (L, N/2)
    tgc_db = auto_tgc(cum, nominal, scanner.auto_tgc)  # (M,)
    edepth = depth[::2]
    tgc_db = np.repeat(tgc_db, step // 2) if step >= 2 else tgc_db[::2]
    if scanner.tgc_error:
        knots = np.linspace(0, 1, len(scanner.tgc_error))
        tgc_db = tgc_db + np.interp(edepth, knots, scanner.tgc_error).astype(np.float32)
    comp = env * np.power(np.float32(10), tgc_db / np.float32(20), dtype=np.float32)
    out = {"image": grid.to_image(log_compress(grid.fov_values(comp), scanner)), "fov": grid.fov}
    if tissue.labels is not None:
        lab = tissue.labels.astype(np.int64)
        out["labels"] = grid.scan_convert_nearest(np.repeat(lab, step // 2, axis=-1))
    if stages:
        out.update(scatterers=s[half : s.shape[0] - half], rf=rf, envelope=env)
        out.update(compensated=comp, bmode=log_compress(comp, scanner))
    return out
