"""Classifier weights fitted without a given source, for measuring adaptation honestly.

An operator never routes between the model pairs the shipped weights were fitted on, so the
adaptation measurement (policies/adapt_eval.py) starts from weights that never saw the file it
streams: ``python -m policies.train``'s protocol on the other ``*.jsonl`` files next to it (plus
the authored chit-chat rows). A fit takes ~130 s, so each is cached under
``var/prior_weights/<hash>/``, keyed by a hash of everything it depends on: the training files'
bytes, the feature and fit configuration, and the training code.

    python -m policies.prior_weights --leave-out ../shared/data/routing/gsm8k.jsonl    # warm the cache
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict
from pathlib import Path

from policies import hashing, routing_data
from policies.classifier import ComplexityClassifier
from policies.features import DENSE_FEATURE_NAMES, FeatureConfig
from policies.fit import FitConfig

CACHE_DIR = routing_data.REPO_ROOT / "var" / "prior_weights"
_CODE = ("fit.py", "train.py", "model.py", "hashing.py", "tokens.py", "calibration.py")


def training_files(leave_out: Path, train_dir: Path | None = None) -> list[Path]:
    """The other ``*.jsonl`` files of ``leave_out``'s directory (or of ``train_dir``)."""
    directory = Path(train_dir) if train_dir is not None else Path(leave_out).parent
    files = [f for f in sorted(directory.glob("*.jsonl")) if f.resolve() != Path(leave_out).resolve()]
    if not files:
        raise FileNotFoundError(f"no other *.jsonl in {directory} to train on")
    return files


def _key(files: list[Path], extra: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in [*files, *extra]:
        digest.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    config = {"features": FeatureConfig().to_dict(), "fit": asdict(FitConfig()), "hashing": hashing.VERSION,
              "dense": list(DENSE_FEATURE_NAMES)}
    digest.update(json.dumps(config, sort_keys=True).encode())
    here = Path(__file__).resolve().parent
    for name in _CODE:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


def leave_one_out(leave_out: Path, train_dir: Path | None = None, log=lambda msg: None) -> tuple[ComplexityClassifier, list[str]]:
    """(classifier trained without ``leave_out``, the files it was trained on); cached."""
    import torch

    from policies.train import train

    files = training_files(leave_out, train_dir)
    extra_files = sorted(routing_data.SYNTHETIC_DATA_DIR.glob("*.jsonl"))
    directory = CACHE_DIR / _key(files, extra_files)
    names = [f.name for f in files]
    if (directory / "complexity.json").exists():
        return ComplexityClassifier.load(directory), names
    log(f"training without {Path(leave_out).name} on {names} (~130 s; cached in {directory})")
    torch.set_num_threads(1)
    examples = [ex for f in files for ex in routing_data.load_file(f)]
    extra = [ex for f in extra_files for ex in routing_data.load_file(f)]
    classifier, _ = train(examples, log=log, extra_train=extra)
    classifier.save(directory)
    return ComplexityClassifier.load(directory), names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m policies.prior_weights", description=__doc__.split("\n")[0])
    parser.add_argument("--leave-out", type=Path, nargs="+", required=True, help="JSONL file(s) to leave out, one fit each")
    parser.add_argument("--train-data", type=Path, help="directory of the other sources (default: each file's own)")
    args = parser.parse_args(argv)
    for path in args.leave_out:
        _, names = leave_one_out(path, args.train_data, log=lambda m: print(f"[prior] {m}", file=sys.stderr, flush=True))
        print(json.dumps({"left_out": path.name, "trained_on": names}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
