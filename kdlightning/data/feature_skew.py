r"""Feature-skew partitions: the samples sorted by a real-valued property mixed with noise, cut into equal parts.

:func:`feature_skew` orders the samples by a property (a column of the data, or a function of the input such
as :func:`mean_intensity`) blended with uniform noise by a ``strictness`` in ``[0, 1]``, and cuts the order
into ``num_parties`` parts whose sizes differ by at most one: 0 gives IID parties, 1 parties of contiguous
ranges of the property. flwr-datasets' counterpart is ``ContinuousPartitioner``. Like every partition function
of :mod:`kdlightning.data.partitioners`, it is a pure function of its arguments drawing only from its own
``np.random.default_rng(seed)``, and returns sorted ``int64`` index arrays that are disjoint and cover every
sample. Its class, for a YAML ``class_path``, is :class:`kdlightning.data.FeatureSkewPartitioner`, which computes
the property from the data set. This module imports numpy only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from kdlightning.data._partitioning import (
    IndexArray,
    _check_int,
    _check_samples,
    _check_unit,
    _even_sizes,
    _group,
    _Names,
    _owner_dtype,
)
from kdlightning.errors import ConfigurationError

__all__ = ["INPUT_FEATURES", "feature_skew", "mean_intensity", "text_length"]

_STRICTNESS = " (0: IID parties, 1: parties sorted by the property)"
"""What a feature-skew partition's ``strictness`` is, said in its errors."""


def feature_skew(values: npt.ArrayLike, num_parties: int, strictness: float, seed: int) -> list[IndexArray]:
    r"""Sort the samples by a property mixed with noise and cut them into ``num_parties`` near-equal parts.

    With ``N`` samples and strictness :math:`s`, sample ``i`` gets the score

    .. math::

        b_i = s \, q_i + (1 - s) \, u_i, \qquad q_i = \frac{r_i}{N - 1}, \quad u_i \sim \mathcal{U}[0, 1),

    where :math:`r_i \in [0, N-1]` is the rank of its value (tied values share their mean rank), so
    :math:`q_i` is its normalised rank in ``[0, 1]`` and :math:`u_i` a uniform draw of the split's own
    generator. The samples are put in increasing order of score (ties, as among equal values at
    :math:`s = 1`, in increasing order of :math:`u_i`) and cut into ``P`` consecutive runs whose sizes differ
    by at most one, the first ``N % P`` runs taking one more; run ``p`` goes to party ``p``, so party 0 holds
    the smallest values.

    :math:`s = 0` is a uniformly random split (IID: every party's values follow the data set's); :math:`s = 1`
    sorts by the property, each party a contiguous range of it. In between, two samples whose normalised
    ranks differ by more than :math:`(1 - s) / s` are always in the order of their values: a party holds
    values from a window of that width around its place in the order.

    Ranks make the blend the same for any property, whatever its scale or outliers. flwr-datasets 0.6.1's
    ``ContinuousPartitioner`` blends the standardised property, :math:`(x - \bar x) / \sigma`, with Gaussian
    noise instead, so a heavy-tailed property or a few outliers change what a strictness means; it refuses a
    constant property unless :math:`s = 0` (here every sample then ties and the order is random).

    Args:
        values: The property of each sample, shape ``(N,)``: finite real numbers.
        num_parties: Number of parties ``P``, in ``[1, N]``.
        strictness: :math:`s`, in ``[0, 1]``.
        seed: Seed of the split's own generator, ``>= 0``.

    Returns:
        ``P`` sorted ``int64`` index arrays, disjoint and together covering ``range(N)``.

    Raises:
        ValueError: If an argument is outside the range above.

    Examples:
        >>> import numpy as np
        >>> brightness = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2])
        >>> [part.tolist() for part in feature_skew(brightness, num_parties=3, strictness=1.0, seed=0)]
        [[1, 5], [2, 3], [0, 4]]
        >>> [len(part) for part in feature_skew(brightness, num_parties=4, strictness=0.0, seed=0)]
        [2, 2, 1, 1]
    """
    return _feature_skew(values, num_parties, strictness, seed, _Names("feature_skew"))


def _feature_skew(
    values: npt.ArrayLike,
    num_parties: int,
    strictness: float,
    seed: int,
    names: _Names,
    argument: str = "values",
    what: str = "values",
) -> list[IndexArray]:
    """:func:`feature_skew`, its errors naming the arguments by ``names``; the values come from ``argument``."""
    array = _check_property(_check_samples(values, names, argument), names(argument), what)
    _check_int(names("seed"), seed, 0)
    parties = _check_int(names("num_parties"), num_parties, 1, array.size, " (at most one party per sample)")
    blend = _check_unit(names("strictness"), strictness, _STRICTNESS)
    size = array.size
    noise = np.random.default_rng(seed).random(size)  # (N,) u
    if blend == 0.0:
        score = noise
    elif blend == 1.0:
        score = array  # in the order of its normalised ranks, ties alike
    else:
        score = blend * (_mean_ranks(array) / max(size - 1, 1)) + (1.0 - blend) * noise  # (N,) b
    sizes = _even_sizes(size, parties)
    return _group(_owners(score, noise, sizes), sizes)


def _check_property(array: npt.NDArray[np.generic], name: str, what: str) -> npt.NDArray[np.float64]:
    """Return ``array`` as ``float64`` if it holds finite real numbers, else raise ``ValueError``."""
    if array.dtype.kind not in "biuf":
        raise ConfigurationError(f"{name}: {what} must be real numbers, got dtype {array.dtype}")
    numbers = array.astype(np.float64, copy=False)
    bad = ~np.isfinite(numbers)
    if bad.any():
        raise ConfigurationError(
            f"{name}: {what} must be finite, got {int(bad.sum())} NaN or infinite values, the first at position "
            f"{int(np.argmax(bad))}; drop those samples or fill them in"
        )
    return numbers


def _mean_ranks(array: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The rank ``0 .. N-1`` of each value in ascending order, tied values sharing their mean rank, shape ``(N,)``."""
    order, ordered = _ascending(array)  # ties in any order: they get the same rank
    repeated = ordered[1:] == ordered[:-1]  # (N - 1,) where a value repeats the one before it
    rank = np.empty(array.size, dtype=np.float64)
    if not repeated.any():
        rank[order] = np.arange(array.size, dtype=np.float64)
        return rank
    starts = np.flatnonzero(np.concatenate(([True], ~repeated)))  # where each distinct value starts in ``ordered``
    counts = np.diff(starts, append=array.size)
    rank[order] = np.repeat(starts + (counts - 1) / 2.0, counts)
    return rank


def _ascending(values: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """An order that sorts ``values`` ascending (ties in no set order), and the values in that order.

    One sort of ``int64`` keys, each the value scaled to ``[0, 2**(62 - b)]`` and floored, shifted left by the
    ``b`` bits of the largest index and or-ed with the sample's index, is faster than ``np.argsort``: numpy sorts
    plain integers with its vectorised sorts. Flooring keeps the order of values that differ at the scale; the
    values it brings into one key come out in index order, so the result is checked and, where it is not
    ascending, the values are argsorted instead: the order returned is always a true one.
    """
    size = values.size
    index_bits = max(int(size - 1).bit_length(), 1)
    low, high = (float(values.min()), float(values.max())) if size else (0.0, 0.0)
    with np.errstate(over="ignore"):
        scale = float(2 ** (62 - index_bits)) / (high - low) if high > low else 0.0
    if 0.0 < scale < np.inf and index_bits < 62:
        key = ((values - low) * scale).astype(np.int64)  # in [0, 2**(62 - b)]: shifted, below 2**63
        key <<= index_bits
        key |= np.arange(size, dtype=np.int64)
        key.sort()
        order = key & ((1 << index_bits) - 1)
        ordered = values[order]
        if (ordered[1:] >= ordered[:-1]).all():
            return order, ordered
    order = np.argsort(values).astype(np.int64, copy=False)
    return order, values[order]


def _owners(
    score: npt.NDArray[np.float64], noise: npt.NDArray[np.float64], sizes: npt.NDArray[np.int64]
) -> npt.NDArray[np.integer]:
    """The party of each sample, the samples cut in consecutive runs of ``sizes`` in the order of ``score``.

    Tied scores go in increasing order of ``noise``. The cut needs no full sort: the scores fall into ``64 P``
    equal-width buckets, and counting them gives each bucket's run of positions in the order. A bucket whose run
    lies inside one party's gives that party to all its samples, whatever their order within it; only the samples
    of a bucket that a cut crosses (at most ``P - 1`` buckets) are sorted, by (score, noise), to place them.
    """
    parties = sizes.size
    buckets = 64 * parties
    low, high = float(score.min()), float(score.max())
    with np.errstate(over="ignore"):
        scale = buckets / (high - low) if high > low else 0.0
    if not scale < np.inf:  # a range too wide for a float: one bucket, every sample sorted
        scale = 0.0
    bucket = ((score - low) * scale).astype(np.int64)
    np.minimum(bucket, buckets - 1, out=bucket)  # the largest score, and rounding at the top
    counts = np.bincount(bucket, minlength=buckets)
    end = np.cumsum(counts)  # (buckets,) one past each bucket's last position
    start = end - counts
    cuts = np.cumsum(sizes)  # party p holds positions cuts[p - 1] .. cuts[p] - 1
    first = np.searchsorted(cuts, start, side="right")  # the party of each bucket's first position
    crossed = (first != np.searchsorted(cuts, end - 1, side="right")) & (counts > 0)
    owner = first.astype(_owner_dtype(parties))[bucket]
    mixed = np.flatnonzero(crossed[bucket])
    if mixed.size:
        placed = mixed[np.lexsort((noise[mixed], score[mixed], bucket[mixed]))]  # by bucket, score, noise
        run = bucket[placed]
        position = start[run] + np.arange(placed.size) - np.searchsorted(run, run, side="left")
        owner[placed] = np.searchsorted(cuts, position, side="right")
    return owner


# ----------------------------------------------------------------------------------------------
# Properties computed from the inputs
# ----------------------------------------------------------------------------------------------


def mean_intensity(inputs: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The mean of each input over all its values: pixels and channels of an image, or features.

    Args:
        inputs: Numeric inputs, shape ``(N, ...)``: images ``(N, C, H, W)``, features ``(N, F)`` or one value
            per sample ``(N,)``.

    Returns:
        One ``float64`` per sample, shape ``(N,)``.

    Raises:
        ValueError: If the inputs are not numbers (text, objects).

    Examples:
        >>> import numpy as np
        >>> mean_intensity(np.array([[[0.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.5]]])).tolist()
        [0.75, 0.125]
    """
    array = np.asarray(inputs)
    if array.dtype.kind not in "biuf":
        raise ConfigurationError(
            f"mean_intensity needs numeric inputs (images or features), got dtype {array.dtype}; for text, use "
            "'text_length' or a column of the data set"
        )
    if array.ndim == 0:
        raise ConfigurationError(f"mean_intensity needs one input per sample, shape (N, ...), got shape {array.shape}")
    return array.reshape(len(array), -1).mean(axis=1, dtype=np.float64)


def text_length(inputs: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The length of each text input, in characters.

    Args:
        inputs: Text inputs, shape ``(N,)`` (strings).

    Returns:
        One ``float64`` per sample, shape ``(N,)``.

    Raises:
        ValueError: If the inputs are not text.

    Examples:
        >>> import numpy as np
        >>> text_length(np.array(["good", "", "not bad"], dtype=object)).tolist()
        [4.0, 0.0, 7.0]
    """
    array = np.asarray(inputs)
    if array.dtype.kind not in "OUS" or array.ndim != 1:
        raise ConfigurationError(
            f"text_length needs text inputs, one string per sample, got dtype {array.dtype} and shape {array.shape}; "
            "for images or features, use 'mean_intensity' or a column of the data set"
        )
    return np.fromiter((len(text) for text in array.tolist()), dtype=np.float64, count=array.size)


INPUT_FEATURES: dict[str, Callable[[npt.ArrayLike], npt.NDArray[np.float64]]] = {
    "mean_intensity": mean_intensity,
    "text_length": text_length,
}
"""The properties :class:`~kdlightning.data.FeatureSkewPartitioner` computes from the inputs, by the name a config
gives as ``feature``."""
