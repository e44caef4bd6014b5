"""Perceptual-hash blocklist of known-bad images (stage ``phash_blocklist``).

File format, one entry per line::

    # comment
    d1c4a7e0f0e1c3b3              -> category known_bad_image (block, severity 10)
    8f0f0f1e3c7c7800 hate_symbols  -> a policy category

Hashes are 16 hex digits from ``safety.phash`` (or ``str(imagehash.phash(img))``). A bad line
fails at start-up with its line number. Entries without a category use ``known_bad_image``,
which is the most severe so a match is never re-rolled around.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from jobs.errors import ConfigurationError
from safety.phash import BITS, hamming, phash
from safety.policy import Policy
from safety.verdict import Action, Verdict

STAGE = "phash_blocklist"
DEFAULT_CATEGORY = "known_bad_image"
DEFAULT_SEVERITY = 10
#: Matches imagehash's usual "same image" range: resizes and JPEG re-encodes land at 0-4,
#: unrelated images around 32.
DEFAULT_MAX_DISTANCE = 8


class PhashBlocklistStage:
    """Blocks images within ``max_distance`` bits of a listed hash."""

    name = STAGE

    def __init__(self, path: Path, policy: Policy, *, max_distance: int = DEFAULT_MAX_DISTANCE) -> None:
        if not 0 <= max_distance < BITS // 2:
            raise ConfigurationError(f"{STAGE}: max_distance must be in 0..{BITS // 2 - 1}, got {max_distance}")
        self.max_distance = max_distance
        self._policy = policy
        self.entries: list[tuple[int, str]] = []
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ConfigurationError(f"{STAGE}: cannot read {path}: {e.strerror}") from None
        known = {c.id for c in policy.categories}
        for n, raw in enumerate(lines, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) > 2 or len(parts[0]) != BITS // 4:
                raise ConfigurationError(f"{path}:{n}: expected '<16 hex digits> [category]', got {raw.strip()!r}")
            try:
                value = int(parts[0], 16)
            except ValueError:
                raise ConfigurationError(f"{path}:{n}: {parts[0]!r} is not a hex hash") from None
            category = parts[1] if len(parts) == 2 else DEFAULT_CATEGORY
            if category != DEFAULT_CATEGORY and category not in known:
                raise ConfigurationError(f"{path}:{n}: unknown category {category!r}; the policy has {sorted(known)}")
            self.entries.append((value, category))

    def check(self, image: Image.Image) -> list[Verdict]:
        h = phash(image)
        best = min(((hamming(h, v), cat) for v, cat in self.entries), default=None)
        version = self._policy.version
        if best is None or best[0] > self.max_distance:
            return [Verdict(STAGE, "none", 0.0, Action.ALLOW, version)]
        distance, category = best
        if category == DEFAULT_CATEGORY:
            action, severity = Action.BLOCK, DEFAULT_SEVERITY
        else:
            cat = self._policy.category(category)
            action, severity = cat.action, cat.severity
        return [Verdict(STAGE, category, 1.0 - distance / BITS, action, version, severity, f"distance:{distance}")]
