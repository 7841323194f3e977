"""Activation capture (models/capture.py): the recorded tensors are the model's own, and
capturing changes nothing."""

from __future__ import annotations

import pytest
import torch

from archlab.models.capture import capture, sites
from tests.conftest import build_seeded, make_tiny_config


def test_captured_sites_are_the_stream_and_the_sublayers():
    model = build_seeded(make_tiny_config(), 0).eval()
    ids = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model(ids).logits
        with capture(model, ["embed", "blocks.0.out", "blocks.1.mixer", "blocks.1.ffn", "final", "head"]) as acts:
            logits = model(ids).logits
        torch.testing.assert_close(logits, plain, rtol=0, atol=0)  # capture changes nothing
        # recompute by hand from the captured pieces: block 1's input is block 0's output
        x0 = acts["blocks.0.out"]
        b1 = model.blocks[1]
        pos = torch.arange(7)
        mixed = b1.mixer(b1.norm1(x0), positions=pos)
        torch.testing.assert_close(acts["blocks.1.mixer"], mixed)
        after = x0 + mixed
        torch.testing.assert_close(acts["blocks.1.ffn"], b1.ffn(b1.norm2(after)))
        torch.testing.assert_close(acts["head"], logits)
        torch.testing.assert_close(model.head(acts["final"]), logits)
    assert acts["embed"].shape == (2, 7, 32) and not acts["blocks.0.out"].requires_grad
    assert all(not m._forward_hooks for m in model.modules())  # hooks gone after the block


def test_several_calls_give_a_list_and_unknown_sites_are_named():
    model = build_seeded(make_tiny_config(), 0).eval()
    ids = torch.randint(0, 256, (1, 4))
    with torch.no_grad(), capture(model, ["blocks.0"]) as acts:
        model(ids)
        model(ids[:, :2])
    assert [t.shape[1] for t in acts["blocks.0"]] == [4, 2]
    assert "blocks.1.mixer" in sites(model)
    with pytest.raises(KeyError, match="blocks.9"):
        with capture(model, ["blocks.9.out"]):
            pass
    assert all(not m._forward_hooks for m in model.modules())
