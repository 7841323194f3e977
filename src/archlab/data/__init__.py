"""archlab data layer: tokenizers, corpora with fixed splits, cached token streams, samplers.

Typical use::

    from archlab.data import make_tokenizer, prepare_corpus, WindowSampler, eval_windows

    tok = make_tokenizer("bytes")
    streams = prepare_corpus(corpus="stdlib", tokenizer=tok)
    sampler = WindowSampler(streams["train"], seq_len=256, batch_size=32, seed=0)
    check_streams(streams, seq_len=256)  # one-line ConfigError if a split is too short
    x, y = sampler.batch(step)
    for x, y in eval_windows(streams["validation"], seq_len=256, batch_size=32):
        ...
"""

from .corpus import (
    CORPORA,
    ENWIK8_SIZES,
    SPLITS,
    Corpus,
    CorpusNotFound,
    Enwik8Corpus,
    PathCorpus,
    StdlibCorpus,
    canonical_split,
    iter_texts,
    open_corpus,
    read_split,
    require_text,
    split_of_relpath,
    stdlib_root,
    stdlib_split_files,
)
from .stream import (
    TokenStream,
    WindowSampler,
    check_streams,
    count_eval_targets,
    default_cache_dir,
    eval_windows,
    prepare_corpus,
    token_dtype,
)
from .tokenizer import (
    TOKENIZER_KINDS,
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    load_tokenizer,
    make_tokenizer,
)

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "CORPORA",
    "Corpus",
    "CorpusNotFound",
    "ENWIK8_SIZES",
    "Enwik8Corpus",
    "PathCorpus",
    "SPLITS",
    "StdlibCorpus",
    "TOKENIZER_KINDS",
    "TokenStream",
    "Tokenizer",
    "WindowSampler",
    "canonical_split",
    "check_streams",
    "count_eval_targets",
    "default_cache_dir",
    "eval_windows",
    "iter_texts",
    "load_tokenizer",
    "make_tokenizer",
    "open_corpus",
    "prepare_corpus",
    "read_split",
    "require_text",
    "split_of_relpath",
    "stdlib_root",
    "stdlib_split_files",
    "token_dtype",
]
