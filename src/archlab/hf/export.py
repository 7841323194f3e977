"""``archlab export RUN --hf DIR``: a trained run as a Hugging Face ``transformers`` folder.

The folder holds ``config.json`` (an :class:`~archlab.hf.configuration.ArchlabConfig`),
``generation_config.json``, ``model.safetensors`` and the run's ``tokenizer.json`` (copied
byte for byte). With ``import archlab`` done, it loads offline with
``AutoModelForCausalLM.from_pretrained(DIR)``; ``archlab.data.load_tokenizer(DIR)`` reads the
tokenizer. A BPE tokenizer file is a Hugging Face ``tokenizers`` file, so for those runs a
``tokenizer_config.json`` is added and ``AutoTokenizer.from_pretrained(DIR)`` works too; the
byte tokenizer is archlab's own format (ids are the UTF-8 bytes: ``list(text.encode())``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

TOKENIZER_FILE = "tokenizer.json"


def export_run(run: Any, out_dir: str | Path) -> Path:
    """Convert a run folder or checkpoint file (or an already loaded
    :class:`~archlab.train.run.LoadedRun`) into a ``from_pretrained`` folder at ``out_dir``.

    The weights are the checkpoint's, bit for bit, in their stored dtype. Returns ``out_dir``.
    Raises :class:`~archlab.train.checkpoint.CheckpointError` for a missing/corrupt run and a
    one-line :class:`~archlab.registry.ConfigError` when transformers is missing or too old
    or ``out_dir`` is not a folder (both are mapped to ``archlab: error: ...`` by the CLI).
    """
    from archlab.registry import ConfigError

    _require_transformers(ConfigError)
    from archlab.hf.configuration import ArchlabConfig
    from archlab.hf.modeling import ArchlabForCausalLM
    from archlab.train.run import LoadedRun, load_run

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--hf {out}: exists and is not a folder")
    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    if loaded.cfg.model.family != "lm":
        raise ConfigError(f"export --hf: model family '{loaded.cfg.model.family}' has no Hugging Face adapter; "
                          "only family 'lm' can be exported")
    model_cfg = loaded.model.cfg
    if loaded.cfg.train.dynamics:
        # The adapted values (rotary base, window) live in the checkpoint's controller state,
        # not in the model config the HF folder is built from: they are written into the
        # config's knobs, and a model built from that config must reproduce the run's.
        from archlab.train.dynamics import adapted_model_config

        model_cfg = adapted_model_config(model_cfg, loaded.model, loaded.cfg.train.dynamics)
        _check_rebuilds(loaded.model, model_cfg)
    out.mkdir(parents=True, exist_ok=True)

    tok_name = getattr(loaded.tokenizer, "name", None)
    # Wrap the loaded LM in place (no copy); the extra config key tells HF users how the
    # model was tokenised without needing archlab ("bytes" or "bpe").
    model = ArchlabForCausalLM(ArchlabConfig.from_archlab(model_cfg, archlab_tokenizer=tok_name), lm=loaded.model)
    model.train(loaded.model.training)
    model.save_pretrained(out)

    src = loaded.path.parent / TOKENIZER_FILE
    if src.is_file():
        shutil.copyfile(src, out / TOKENIZER_FILE)
    else:  # a run folder predating saved tokenizers: write the equivalent file
        loaded.tokenizer.save(out)
    if tok_name == "bpe":
        # The archlab BPE file is a `tokenizers` JSON; this makes AutoTokenizer accept it.
        (out / "tokenizer_config.json").write_text(
            json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}, indent=2) + "\n",
            encoding="utf-8",
        )
    return out


def _check_rebuilds(model: Any, model_cfg: Any) -> None:
    """A model built from ``model_cfg`` with ``model``'s weights gives ``model``'s logits on a
    probe, or a one-line ConfigError: the exported config must describe the trained model."""
    import torch

    from archlab.models import build_model
    from archlab.registry import ConfigError

    device = next(model.parameters()).device
    fresh = build_model(model_cfg).to(device).eval()
    fresh.load_state_dict(model.state_dict())
    T = min(64, model_cfg.max_seq_len)
    ids = torch.randint(0, model_cfg.vocab_size or 256, (2, T), generator=torch.Generator().manual_seed(0)).to(device)
    was = model.training
    model.eval()
    with torch.no_grad():
        a, b = model(ids).logits, fresh(ids).logits
    model.train(was)
    if not torch.allclose(a, b, rtol=1e-5, atol=1e-5):
        raise ConfigError("export --hf: the adapted values of train.dynamics could not be written into a config that "
                          f"reproduces the model (max logit difference {float((a - b).abs().max()):.3g})")


def _require_transformers(error: type[Exception]) -> None:
    """Fail early, in one line, instead of with an ImportError traceback from deep inside."""
    import importlib.util

    from archlab.hf import _hook

    if importlib.util.find_spec("transformers") is None:
        raise error("exporting to Hugging Face format needs transformers: pip install 'archlab[hf]'")
    import transformers

    if not _hook.transformers_supported():
        raise error(f"exporting to Hugging Face format needs transformers>={_hook.MIN_TRANSFORMERS_MAJOR}, "
                    f"found {transformers.__version__}: pip install -U 'archlab[hf]'")


__all__ = ["export_run"]
