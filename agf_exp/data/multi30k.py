"""``data=multi30k``: Multi30k task 1 (Flickr30k captions), English-German, raw text.

Splits: train (29,000 pairs), valid = ``val`` (1,014), test = ``test_2016_flickr`` (1,000).
The loader reads ``{train,val,test_2016_flickr}.{en,de}.gz`` from ``data.root``. Without a
root it uses ``<cache_dir>/multi30k``, downloading the files there first when
``data.download=true``, or on demand with::

    python -m agf_exp.data.multi30k download [--dest DIR]

Files come from the Multi30k project's repository (github.com/multi30k/dataset,
``data/task1/raw``) and are checked against the SHA-256 sums below.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..atomic import atomic_write_bytes
from .corpus import DataConfig, DataError, ParallelCorpus, expand, read_parallel, register_source

BASE_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
SPLIT_FILES = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
SHA256 = {
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
}


@dataclass
class Multi30kConfig(DataConfig):
    name: str = "multi30k"
    # Folder holding the .gz files; null = <cache_dir>/multi30k. Set MULTI30K_ROOT to point at a
    # local copy without editing configs.
    root: Optional[str] = "${oc.env:MULTI30K_ROOT,null}"
    download: bool = False  # fetch missing files into <cache_dir>/multi30k
    base_url: str = BASE_URL
    verify_checksum: bool = True


def file_names(src_lang: str, tgt_lang: str):
    return [f"{SPLIT_FILES[s]}.{lang}.gz" for s in SPLIT_FILES for lang in (src_lang, tgt_lang)]


def download(dest: Path, base_url: str = BASE_URL, verify_checksum: bool = True, langs=("en", "de")) -> Path:
    """Fetch the raw Multi30k files into ``dest`` (skipping ones already there), verifying each
    against its SHA-256 before it is renamed into place."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in file_names(*langs):
        target = dest / name
        if target.is_file():
            continue
        url = f"{base_url.rstrip('/')}/{name}"
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                data = response.read()
        except OSError as e:
            raise DataError(
                f"could not download {url}: {e}. Without network access, copy the Multi30k files "
                f"into {dest} (or set data.root / MULTI30K_ROOT to a folder that has them)"
            ) from e
        digest = hashlib.sha256(data).hexdigest()
        if verify_checksum and name in SHA256 and digest != SHA256[name]:
            raise DataError(
                f"checksum mismatch for {url}: got sha256 {digest}, expected {SHA256[name]}; the file "
                "was not saved. Retry, or pass data.verify_checksum=false if upstream changed the file"
            )
        atomic_write_bytes(target, data)
    return dest


def resolve_root(cfg: Multi30kConfig) -> Path:
    if cfg.root:
        root = expand(cfg.root)
        if not root.is_dir():
            raise DataError(
                f"data.root={root} does not exist. Point data.root (or the MULTI30K_ROOT environment "
                "variable) at the folder holding train.en.gz etc., or leave it unset and run "
                "`python -m agf_exp.data.multi30k download` (or pass data.download=true)"
            )
        return root
    root = expand(cfg.cache_dir) / "multi30k"
    missing = [n for n in file_names(cfg.src_lang, cfg.tgt_lang) if not (root / n).is_file()]
    if missing:
        if not cfg.download:
            raise DataError(
                f"Multi30k files {missing} are not in {root}. Run `python -m agf_exp.data.multi30k "
                "download`, pass data.download=true, or set data.root (or MULTI30K_ROOT) to a local copy"
            )
        download(root, cfg.base_url, cfg.verify_checksum, (cfg.src_lang, cfg.tgt_lang))
    return root


@register_source(Multi30kConfig)
def load_multi30k(cfg: Multi30kConfig, seed: int) -> ParallelCorpus:
    root = resolve_root(cfg)
    splits = {
        split: read_parallel(root / f"{stem}.{cfg.src_lang}.gz", root / f"{stem}.{cfg.tgt_lang}.gz")
        for split, stem in SPLIT_FILES.items()
    }
    return ParallelCorpus(splits, f"multi30k task1 {cfg.src_lang}-{cfg.tgt_lang} ({root})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agf_exp.data.multi30k", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    dl = sub.add_parser("download", help="fetch the raw files (with checksum check)")
    cache = expand(os.environ.get("AGF_CACHE_DIR", "~/.cache/agf_exp"))
    dl.add_argument("--dest", default=str(cache / "multi30k"))
    dl.add_argument("--base-url", default=BASE_URL)
    dl.add_argument("--no-verify", action="store_true")
    args = parser.parse_args(argv)
    try:
        path = download(Path(args.dest), args.base_url, not args.no_verify)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Multi30k files are in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
