"""AdaptiveRouter: the shipped classifier as a prior, one deployment's outcomes as the evidence.

    router = AdaptiveRouter(ComplexityClassifier.shipped(), pair="small->large", target_large_share=0.3)
    f = router.features(messages=req["messages"])
    tier = "large" if router.use_large(f) else "small"
    ...
    router.observe(Outcome(...))           # feedback, shadow evaluation, replay (policies/outcome.py)

The model: each tier's score on a request is linear in a short feature vector phi(x),

  large(x) = m(x) + g(x)/2,   small(x) = m(x) - g(x)/2,   g = w_g . phi,  m = w_m . phi
  phi(x)   = [1, 2 sigmoid(shipped logit) - 1, the shipped model's standardised dense features,
              the sentence-embedding projection (policies/embedding.py) when there is one,
              the in-file lexical model's predicted gain]

with a Gaussian prior on (w_g, w_m) centred on "the gain is what the shipped model says"
(w_g = [0, 1, 0, ...]) and on an average score of 0.5. Every outcome is a linear observation of
(w_g, w_m): a shadow row sees both scores (so g and m), a feedback row only the routed tier's
score (large = m + g/2, or small = m - g/2). The posterior is exact Bayesian linear regression,
updated one row at a time (Sherman-Morrison, O(dim^2)); ``fit`` (offline refit) is the same
computation over the stored rows in time order.

The last input is stacking: a lexical model of the gain on the request's hashed words and word
pairs (one weight per bucket, a diagonal ridge step per shadow row, ``lexical_l2``) learns the
deployment's topics the way an in-file TF-IDF regression would, and its prediction for a row is
taken before that row teaches it, so the regression weighs it by how well it has predicted so far.

Feedback labels are chosen by the router itself (only the routed tier is scored). Modelling each
tier's score as a function of x makes that selection ignorable when the model is right; rows are
also weighted by the inverse of the probability that the router sent them to the tier it did
(``ipw``), so a misspecified model is fitted to the whole traffic, not to each tier's share of it.
Those propensities come from ``explore``: a share of decisions made at random with the target
share, without which a tier is never seen on the other tier's requests.

The adapted score (1 + g(x)) / 2 equals the shipped score exactly while there is no evidence.
``use_large`` compares it with a threshold that a share controller sets from the current model's
scores on the last ``window`` requests (the (1 - target) quantile), so ``large_share`` stays on
target over that window whatever the scores' scale. The router never changes the policy's rules:
tiers, budgets, capacity and session pins are applied around it by policy_router.py.
"""

from __future__ import annotations

import base64
import threading
import zlib
from collections import deque
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable, Mapping

import numpy as np

from policies import metrics
from policies.features import RequestFeatures
from policies.outcome import Outcome, decode_features
from policies.request_text import from_request

STATE_VERSION = 1


@dataclass(frozen=True)
class AdaptKnobs:
    """Prior and controller settings (``AdaptiveRouter(..., **knobs)``)."""

    noise_sd: float = 0.45  # per-score noise: scores are mostly 0/1 judgements of one answer
    gain_intercept_sd: float = 0.15
    base_sd: float = 0.5  # how far the shipped score's coefficient may move from 1
    dense_sd: float = 0.06  # per standardised dense feature
    embedding_sd: float = 0.03  # per embedding dimension (unit variance after embedding.py)
    # The in-file lexical model (hashed words and word pairs, one weight each, per-weight ridge
    # updates with this L2): its prediction, made before each row teaches it, is one more input
    # of the regression (stacking). 0 turns it off.
    lexical_l2: float = 10.0
    lexical_sd: float = 0.5
    mean_sd: float = 0.5  # the average-score part m(x), which routing does not use directly
    window: int = 1000  # requests the share controller looks back on
    min_window: int = 50  # below this many, the shipped calibration gives the threshold
    refresh_every: int = 8  # decisions between threshold refreshes
    share_gain: float = 10.0  # how hard the controller pays back the window's miss (10: within 2 points at 30% over 500)
    explore: float = 0.0  # share of decisions made at random (needed to learn from feedback)
    ipw: bool = True
    max_weight: float = 20.0  # inverse-propensity weights are clipped to this
    eval_window: int = 2000  # shadow rows kept for the APGR estimate
    seed: int = 0


class AdaptiveRouter:
    """Adapted P(large needed) for one model pair; thread-safe."""

    def __init__(self, base, pair: str, target_large_share: float | None = None, embedder=None, **knobs):
        self.base = base
        self.pair = pair
        self.target_large_share = target_large_share
        self.embedder = embedder
        self.knobs = replace(AdaptKnobs(), **knobs)
        self.n_dense = len(base.params.dense_mean)
        self.n_embedding = 0 if embedder is None else int(embedder.dim)
        k = self.knobs
        config = base.featurizer.config
        self.n_lexical = 1 if k.lexical_l2 > 0 and config.word_unigrams and config.word_bigrams else 0
        self.dim = 2 + self.n_dense + self.n_embedding + self.n_lexical
        residual_sd = np.concatenate([np.full(self.n_dense, k.dense_sd), np.full(self.n_embedding, k.embedding_sd),
                                      np.full(self.n_lexical, k.lexical_sd)])
        if self.n_lexical:
            self._lex_w = np.zeros(base.featurizer.n_buckets)
            self._lex_p = np.zeros(base.featurizer.n_buckets)
        sd_g = np.concatenate([[k.gain_intercept_sd, k.base_sd], residual_sd])
        sd_m = np.concatenate([[k.mean_sd, k.dense_sd], residual_sd])
        self._prior_mean = np.zeros(2 * self.dim)
        self._prior_mean[1] = 1.0  # w_g: the shipped gain
        self._prior_mean[self.dim] = 0.5  # w_m: an average score of one half
        self._mean = self._prior_mean.copy()
        self._cov = np.diag(np.concatenate([sd_g, sd_m]) ** 2)
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(k.seed)
        self._recent = _Window(k.window, self.dim)
        self._threshold: float | None = None
        self._since_refresh = 0
        self._evaluated: deque[tuple[float, float, float]] = deque(maxlen=k.eval_window)
        self.labels_seen = {"both": 0, "small_only": 0, "large_only": 0}

    # ----- features and scores

    def features(self, messages=None, prompt: str | None = None) -> RequestFeatures:
        """The request's features, with the embedding this router reads when it has an embedder
        (from the word hashes the featurizer computed anyway: the text is hashed once)."""
        dense, groups, words = self.base.featurizer.analyse(from_request(messages=messages, prompt=prompt))
        f = self.base.featurizer.assemble(dense, groups)
        if self.embedder is None:
            return f
        return replace(f, embedding=self.embedder.embed_words(words))

    def phi(self, features: RequestFeatures) -> np.ndarray:
        """The regression's feature vector for one request (see the module docstring)."""
        params = self.base.params
        out = np.zeros(self.dim)
        out[0] = 1.0
        out[1] = 2.0 * self.base.score_features(features) - 1.0
        out[2 : 2 + self.n_dense] = params.standardise(features.dense)
        if self.n_embedding and features.embedding is not None and len(features.embedding) == self.n_embedding:
            out[2 + self.n_dense : 2 + self.n_dense + self.n_embedding] = features.embedding
        if self.n_lexical:
            idx, val = self._lexical(features)
            out[-1] = float(self._lex_w[idx] @ val)
        return out

    @staticmethod
    def _lexical(features):
        """(buckets, values) of the words and word pairs: the first two groups of the hashed
        features, whose lengths follow from the words group's value 1 / sqrt(words)."""
        if not len(features.values):
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        n_words = int(round(1.0 / float(features.values[0]) ** 2))
        take = min(len(features.indices), 2 * n_words - 1)
        return np.asarray(features.indices[:take]), np.asarray(features.values[:take], dtype=np.float64)

    def _rank_phi(self, phi: np.ndarray) -> float:
        return 0.5 * (1.0 + float(phi @ self._mean[: self.dim]))

    def _score_phi(self, phi: np.ndarray) -> float:
        return min(1.0, max(0.0, self._rank_phi(phi)))

    def score(self, features: RequestFeatures) -> float:
        """Adapted P(large needed) in [0, 1]: (1 + expected gain of the large tier) / 2."""
        phi = self.phi(features)
        with self._lock:
            return self._score_phi(phi)

    def rank(self, features: RequestFeatures) -> float:
        """``score`` before it is clipped to [0, 1]: what ``use_large`` compares with the threshold,
        so that requests whose expected gain is beyond +-1 keep their order instead of tying."""
        phi = self.phi(features)
        with self._lock:
            return self._rank_phi(phi)

    def use_large(self, features: RequestFeatures) -> bool:
        """Whether this request goes to the large tier (and remember it for the share controller)."""
        phi = self.phi(features)
        with self._lock:
            score = self._rank_phi(phi)
            explore = self.knobs.explore
            if explore and self._rng.random() < explore:
                large = bool(self._rng.random() < self._share_target())
            else:
                large = score >= self._current_threshold(phi)
            self._recent.append(phi, large)
            return large

    def threshold(self) -> float:
        """The ``rank`` at or above which requests go large now."""
        with self._lock:
            return self._threshold if self._threshold is not None else self._calibrated_threshold()

    def _share_target(self) -> float:
        return 0.5 if self.target_large_share is None else self.target_large_share

    def _calibrated_threshold(self) -> float:
        if self.target_large_share is None:
            return 0.5
        return float(self.base.threshold_for_large_share(self.target_large_share))

    def _current_threshold(self, phi: np.ndarray) -> float:
        self._since_refresh += 1
        if self._threshold is None or self._since_refresh >= self.knobs.refresh_every:
            self._refresh_threshold()
        return self._threshold

    def _refresh_threshold(self) -> None:
        self._since_refresh = 0
        if self.target_large_share is None or len(self._recent) < self.knobs.min_window:
            self._threshold = self._calibrated_threshold()
            return
        scores = 0.5 * (1.0 + self._recent.phis() @ self._mean[: self.dim])
        # The (1 - share) quantile of the window's scores under the current model, where share is
        # the target plus the window's deficit: new requests alone would miss the target by the
        # sampling noise of a window (about 2 points at 30% over 500), this pays the miss back.
        realised = self._recent.share()
        share = min(1.0, max(0.0, self.target_large_share + self.knobs.share_gain * (self.target_large_share - realised)))
        self._threshold = float(np.quantile(scores, 1.0 - share, method="higher")) if share > 0 else float("inf")

    # ----- learning

    def observe(self, outcome: Outcome) -> None:
        """Update the posterior with one labelled request of this router's pair."""
        if outcome.pair != self.pair:
            raise ValueError(f"outcome for pair {outcome.pair!r} given to the router of {self.pair!r}")
        features = decode_features(outcome.features)
        phi = self.phi(features)
        with self._lock:
            self._observe_phi(phi, outcome.routed, outcome.small_score, outcome.large_score)
            if self.n_lexical and outcome.both_scored:
                self._observe_lexical(features, outcome.large_score - outcome.small_score)

    def _observe_lexical(self, features: RequestFeatures, gain: float) -> None:
        """One diagonal recursive-least-squares step of the lexical model towards this row's gain
        (it learns from shadow rows only: a feedback row has no gain)."""
        idx, val = self._lexical(features)
        if not len(idx):
            return
        residual = gain - float(self._lex_w[idx] @ val)
        np.add.at(self._lex_p, idx, val * val)
        np.add.at(self._lex_w, idx, val * residual / (self.knobs.lexical_l2 + self._lex_p[idx]))

    def _observe_phi(self, phi, routed, small, large) -> None:
        d = self.dim
        var = self.knobs.noise_sd ** 2
        zeros = np.zeros(d)
        if small is not None and large is not None:
            self._evaluated.append((self._rank_phi(phi), float(small), float(large)))
            # Both scores: the gain (noise 2 var) and the mean (noise var / 2), independent.
            self._update(np.concatenate([phi, zeros]), float(large) - float(small), 2.0 * var)
            self._update(np.concatenate([zeros, phi]), 0.5 * (float(large) + float(small)), 0.5 * var)
            self.labels_seen["both"] += 1
        elif large is not None:
            self._update(np.concatenate([0.5 * phi, phi]), float(large), var / self._weight(phi, True))
            self.labels_seen["large_only"] += 1
        else:
            self._update(np.concatenate([-0.5 * phi, phi]), float(small), var / self._weight(phi, False))
            self.labels_seen["small_only"] += 1
        self._since_refresh = self.knobs.refresh_every  # the next decision re-reads the window

    def _weight(self, phi: np.ndarray, routed_large: bool) -> float:
        """1 / P(the router sends this request to the tier it went to), from the current threshold."""
        if not self.knobs.ipw:
            return 1.0
        k = self.knobs
        threshold = self._threshold if self._threshold is not None else self._calibrated_threshold()
        above = self._rank_phi(phi) >= threshold
        p_large = k.explore * self._share_target() + (1.0 - k.explore) * float(above)
        p = p_large if routed_large else 1.0 - p_large
        return float(min(k.max_weight, 1.0 / max(p, 1.0 / k.max_weight)))

    def _update(self, h: np.ndarray, y: float, noise_var: float) -> None:
        sh = self._cov @ h
        denom = noise_var + float(h @ sh)
        gain = sh / denom
        self._mean += gain * (y - float(h @ self._mean))
        self._cov -= np.outer(gain, sh)
        self._cov = 0.5 * (self._cov + self._cov.T)

    # ----- status and persistence

    def large_share(self) -> float | None:
        with self._lock:
            return self._recent.share() if len(self._recent) else None

    def status(self) -> dict:
        """labels_seen, rolling large_share, threshold, and APGR of the adapted scores on shadow rows
        (each scored before the router learnt from it) with a 95% bootstrap interval."""
        with self._lock:
            evaluated = np.asarray(self._evaluated) if self._evaluated else np.zeros((0, 3))
            share = self._recent.share() if len(self._recent) else None
            threshold = self._threshold
            labels = dict(self.labels_seen)
            gain_weights = self._mean[: self.dim]
        estimate, ci = _apgr_with_interval(evaluated, self.knobs.seed)
        return {
            "pair": self.pair,
            "labels_seen": sum(labels.values()),
            "labels": labels,
            "large_share": None if share is None else round(share, 4),
            "target_large_share": self.target_large_share,
            "window": len(self._recent),
            "threshold": None if threshold is None else round(threshold, 4),
            "apgr_estimate": estimate,
            "apgr_ci": ci,
            "apgr_rows": int(len(evaluated)),
            "shipped_weight": round(float(gain_weights[1]), 4),
        }

    def state(self) -> dict:
        """JSON-serialisable state; ``from_state(base, state)`` restores it."""
        with self._lock:
            return {
                "version": STATE_VERSION,
                "pair": self.pair,
                "target_large_share": self.target_large_share,
                "knobs": asdict(self.knobs),
                "dim": self.dim,
                "n_embedding": self.n_embedding,
                "base": _base_id(self.base),
                "mean": _pack(self._mean),
                "cov": _pack(self._cov),
                "labels_seen": dict(self.labels_seen),
                "recent_large": [int(x) for x in self._recent.decisions()],
                # the share controller's window, so a restored router keeps its threshold
                "recent_phi": _pack(self._recent.phis(ordered=True), "<f2"),
                "threshold": self._threshold,
                "lexical": self._lexical_state(),
                "evaluated": [list(map(float, row)) for row in self._evaluated],
            }

    @classmethod
    def from_state(cls, base, state: Mapping[str, Any], embedder=None) -> "AdaptiveRouter":
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"adaptive router state v{state.get('version')}; this code reads v{STATE_VERSION}")
        router = cls(base, state["pair"], state.get("target_large_share"), embedder=embedder, **state.get("knobs", {}))
        if router.dim != state["dim"]:
            raise ValueError(f"state has {state['dim']} features, this router {router.dim} (embedder or weights differ)")
        router._mean = _unpack(state["mean"], (2 * router.dim,))
        router._cov = _unpack(state["cov"], (2 * router.dim, 2 * router.dim))
        router.labels_seen.update(state.get("labels_seen", {}))
        decisions = [bool(x) for x in state.get("recent_large", ())]
        phis = _unpack(state["recent_phi"], (-1, router.dim), "<f2") if state.get("recent_phi") else np.zeros((0, router.dim))
        if len(phis) == len(decisions):
            for phi, large in zip(phis, decisions):
                router._recent.append(phi, large)
        router._threshold = state.get("threshold")
        lexical = state.get("lexical")
        if router.n_lexical and lexical:
            index = _unpack(lexical["index"], (-1,), "<i4").astype(np.int64)
            router._lex_w[index] = _unpack(lexical["weight"], (-1,))
            router._lex_p[index] = _unpack(lexical["precision"], (-1,))
        router._evaluated.extend(tuple(row) for row in state.get("evaluated", ()))
        return router

    def _lexical_state(self) -> dict | None:
        if not self.n_lexical:
            return None
        index = np.flatnonzero(self._lex_p)
        return {"index": _pack(index, "<i4"), "weight": _pack(self._lex_w[index]),
                "precision": _pack(self._lex_p[index])}

    @classmethod
    def fit(cls, base, outcomes: Iterable[Outcome], pair: str, target_large_share: float | None = None,
            embedder=None, **knobs) -> "AdaptiveRouter":
        """Offline refit: the router after ``outcomes`` of ``pair`` (others are skipped), replayed
        in time order (``created_at``), which is the online router's state after the same rows."""
        router = cls(base, pair, target_large_share, embedder=embedder, **knobs)
        for outcome in sorted((o for o in outcomes if o.pair == pair), key=lambda o: o.created_at):
            router.observe(outcome)
        return router


class _Window:
    """The share controller's last ``size`` decisions and their feature vectors, in a ring (no
    per-request allocation; the threshold refresh reads them as one matrix)."""

    def __init__(self, size: int, dim: int):
        self._phi = np.zeros((size, dim))
        self._large = np.zeros(size, dtype=bool)
        self._next = 0
        self._count = 0
        self._n_large = 0

    def __len__(self) -> int:
        return self._count

    def append(self, phi: np.ndarray, large: bool) -> None:
        i = self._next
        if self._count == len(self._large):
            self._n_large -= int(self._large[i])
        else:
            self._count += 1
        self._phi[i] = phi
        self._large[i] = large
        self._n_large += int(large)
        self._next = (i + 1) % len(self._large)

    def share(self) -> float:
        return self._n_large / self._count if self._count else 0.0

    def _order(self) -> np.ndarray:
        if self._count < len(self._large):
            return np.arange(self._count)
        return (np.arange(self._count) + self._next) % len(self._large)

    def phis(self, ordered: bool = False) -> np.ndarray:
        if ordered:
            return self._phi[self._order()]
        return self._phi[: self._count] if self._count < len(self._large) else self._phi

    def decisions(self) -> np.ndarray:
        return self._large[self._order()]


def _base_id(base) -> str:
    meta = getattr(base, "metadata", {}) or {}
    return str(meta.get("trained_at") or meta.get("data") or "")


def _pack(array: np.ndarray, dtype: str = "<f8") -> str:
    return base64.b64encode(zlib.compress(np.ascontiguousarray(array, dtype=dtype).tobytes())).decode("ascii")


def _unpack(text: str, shape: tuple[int, ...], dtype: str = "<f8") -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=dtype).reshape(shape).astype(np.float64)


def _apgr_with_interval(rows: np.ndarray, seed: int, resamples: int = 200) -> tuple[float | None, list | None]:
    if len(rows) < 20:
        return None, None
    scores, small, large = rows[:, 0], rows[:, 1], rows[:, 2]
    try:
        estimate = metrics.apgr(metrics.gain_curve(scores, small, large))
    except ValueError:  # the tiers were equally good on these rows: PGR is undefined
        return None, None
    rng = np.random.default_rng([seed, 0xB007])
    draws = []
    for _ in range(resamples):
        pick = rng.integers(0, len(rows), len(rows))
        try:
            draws.append(metrics.apgr(metrics.gain_curve(scores[pick], small[pick], large[pick])))
        except ValueError:
            continue
    lo, hi = np.quantile(draws, [0.025, 0.975]) if draws else (estimate, estimate)
    return round(float(estimate), 4), [round(float(lo), 4), round(float(hi), 4)]
