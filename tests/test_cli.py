"""The command line a new user meets: one-line errors with exit 2, --version, --help pages
with defaults and examples, info --full, train --dry-run, escapes in --prompt/--stop, and the
sampling settings and context cropping of generation behind ``archlab generate``."""

from __future__ import annotations

import json
import math
import shutil
import signal
import zipfile

import pytest
import torch
import yaml

import archlab
import archlab.models
import archlab.models.generation as generation
from archlab import cli
from archlab.cli import BENCHES, main, unescape
from archlab.config import load_config
from archlab.data.taskdata import WordTokenizer
from archlab.models import build_model, generate
from archlab.registry import ConfigError
from tests.conftest import make_tiny_config


def one_error_line(capsys) -> str:
    """The single stderr line of a refused command (asserting there is exactly one)."""
    err = capsys.readouterr().err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("archlab: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus):
    """A finished two-step byte-level run, trained through the CLI."""
    root = tmp_path_factory.mktemp("cli_run")
    out = root / "run"
    sets = ["model.dim=16", "model.depth=1", "model.heads=2", "model.max_seq_len=64", "data.corpus=path",
            f"data.path={corpus}", f"data.cache_dir={root / 'cache'}", "train.steps=2", "train.tokens=null",
            "train.batch=2", "train.seq_len=16", "train.eval_tokens=64", "train.tensorboard=false"]
    assert main(["train", "configs/lm.yaml", "--out", str(out), "--no-progress",
                 *[x for s in sets for x in ("--set", s)]]) == 0
    return out


# ----------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize("exc", [
    ValueError("bad value\nsecond line of detail"),
    RuntimeError("the accelerator is gone"),
    OSError("disk full"),
    PermissionError(13, "Permission denied", "/root/out"),
    IsADirectoryError(21, "Is a directory", "/tmp/out.json"),
    json.JSONDecodeError("Expecting value", "{", 1),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    yaml.YAMLError("mapping values are not allowed here"),
    zipfile.BadZipFile("File is not a zip file"),
    ConfigError("model.dim: expected an integer"),
])
def test_user_errors_are_one_line_exit_2(exc, monkeypatch, capsys):
    def raise_it(a):
        raise exc

    monkeypatch.setattr(cli, "_cmd_info", raise_it)
    assert main(["info"]) == 2
    line = one_error_line(capsys)
    if isinstance(exc, OSError) and exc.filename:
        assert exc.filename in line


@pytest.mark.parametrize("exc", [TypeError("x"), KeyError("x"), AttributeError("x"), IndexError("x"),
                                 RecursionError("x")])
def test_bugs_keep_their_traceback(exc, monkeypatch):
    def raise_it(a):
        raise exc

    monkeypatch.setattr(cli, "_cmd_info", raise_it)
    with pytest.raises(type(exc)):
        main(["info"])


def test_traceback_on_request(monkeypatch):
    monkeypatch.setattr(cli, "_cmd_info", lambda a: (_ for _ in ()).throw(ValueError("x")))
    monkeypatch.setenv("ARCHLAB_TRACEBACK", "1")
    with pytest.raises(ValueError):
        main(["info"])


class FakeInterrupted(KeyboardInterrupt):
    """The trainer's Interrupted: a KeyboardInterrupt carrying the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}; checkpoint saved, continue with --resume")
        self.signum = signum


@pytest.mark.parametrize("exc, code", [
    (KeyboardInterrupt(), 130),
    (FakeInterrupted(signal.SIGINT), 130),
    (FakeInterrupted(signal.SIGTERM), 143),
])
def test_interrupts_exit_128_plus_signal(exc, code, monkeypatch, capsys):
    def raise_it(a):
        raise exc

    monkeypatch.setattr(cli, "_cmd_info", raise_it)
    assert main(["info"]) == code
    err = capsys.readouterr().err.strip("\n").split("\n")
    assert len(err) == 1 and err[0].startswith("archlab: interrupted"), err


def test_trainers_interrupted_maps_to_its_signal(monkeypatch, capsys):
    Interrupted = getattr(pytest.importorskip("archlab.train.trainer"), "Interrupted", None)
    if Interrupted is None:
        pytest.skip("the trainer has no Interrupted yet")
    monkeypatch.setattr(cli, "_cmd_info", lambda a: (_ for _ in ()).throw(Interrupted(signal.SIGTERM)))
    assert main(["info"]) == 143
    assert capsys.readouterr().err.count("\n") == 1


def test_corrupt_tokenizer_json(run_dir, tmp_path, capsys):
    bad = tmp_path / "run"
    shutil.copytree(run_dir, bad)
    (bad / "tokenizer.json").write_text('{"kind": "by')
    assert main(["eval", str(bad)]) == 2
    assert "tokenizer.json" in one_error_line(capsys)


def test_non_utf8_config(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model: {dim: 64}  # größe\n".encode("latin-1"))
    assert main(["info", str(path)]) == 2
    assert str(path) in one_error_line(capsys)


def test_bad_yaml_in_set(capsys):
    assert main(["info", "configs/lm.yaml", "--set", "model.dim=["]) == 2
    assert "model.dim" in one_error_line(capsys)


def test_corrupt_enwik8_zip(tmp_path, capsys):
    (tmp_path / "enwik8.zip").write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["train", "configs/lm.yaml", "--out", str(tmp_path / "r"), "--no-progress",
                 "--set", "data.corpus=enwik8", "--set", f"data.path={tmp_path / 'enwik8.zip'}",
                 "--set", f"data.cache_dir={tmp_path / 'cache'}"]) == 2
    assert "enwik8.zip" in one_error_line(capsys)


def test_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    assert main(["train", "configs/lm.yaml", "--out", str(tmp_path / "taken" / "run"), "--no-progress"]) == 2
    assert "taken" in one_error_line(capsys)


@pytest.mark.parametrize("content", ["", "   \n", '{"experiment": {"name": "x"}, "runs": [{"vari', "[1, 2]"])
def test_report_on_empty_truncated_or_foreign_results(content, tmp_path, capsys):
    (tmp_path / "results.json").write_text(content)
    assert main(["report", str(tmp_path)]) == 2
    assert str(tmp_path / "results.json") in one_error_line(capsys)


def test_report_on_missing_results(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "results.json" in one_error_line(capsys)


@pytest.mark.parametrize("flag, value", [("--batch", "0"), ("--max-tokens", "0"), ("--seq-len", "-3")])
def test_eval_refuses_non_positive_sizes(flag, value, capsys):
    assert main(["eval", "/nonexistent/run", flag, value]) == 2  # refused before the run is opened
    assert flag in one_error_line(capsys)


# ----------------------------------------------------------------------------- version, info, dry run


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("archlab ") and out.split()[1][0].isdigit()
    assert cli.version() == out.split()[1]


def test_version_falls_back_to_the_package(monkeypatch):
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "version", missing)
    assert cli.version() == archlab.__version__


def test_info_full_prints_the_resolved_config(capsys):
    assert main(["info", "configs/lm.yaml", "--set", "model.depth=3", "--full"]) == 0
    out = capsys.readouterr().out
    table, marker, resolved = out.partition("# resolved config")
    assert marker and "parameters:" in table and "layer" in table
    data = yaml.safe_load(resolved.split("\n", 1)[1])
    cfg = load_config("configs/lm.yaml", ["model.depth=3"])
    assert data == cfg.to_dict()
    assert data["model"]["depth"] == 3 and "lr" in data["train"]  # defaults filled in


def test_info_without_a_budget_still_describes(capsys):
    assert main(["info", "configs/lm.yaml", "--set", "train.tokens=null"]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "budget: none set" in out


def test_train_dry_run_creates_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train", "configs/lm.yaml", "--out", str(out), "--dry-run", "--set", "train.batch=8"]) == 0
    assert not out.exists()
    text = capsys.readouterr().out
    head, _, rest = text.partition("\n\nparameters:")
    assert yaml.safe_load(head)["train"]["batch"] == 8
    cfg = load_config("configs/lm.yaml", ["train.batch=8"])
    n = sum(p.numel() for p in build_model(cfg.model).parameters())
    assert f"{n:,}" in rest.split("\n")[0]
    assert f"tokens per step: 8 × {cfg.train.seq_len} = {8 * cfg.train.seq_len:,}" in rest
    assert f"budget: {cfg.train.total_steps()} steps" in rest and "would be created" in rest


def test_train_dry_run_still_validates(tmp_path, capsys):
    assert main(["train", "configs/lm.yaml", "--out", str(tmp_path / "x"), "--dry-run",
                 "--set", "model.heads=3"]) == 2
    assert "model.heads" in one_error_line(capsys)
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- help pages

COMMANDS = ["train", "eval", "generate", "info", "bench", "compare", "report", "export", "demo", "sae", "redshift",
            "compress", "decompress"]


def help_page(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command, capsys):
    out = help_page([command], capsys)
    assert out.startswith(f"usage: archlab {command}") and f"examples:\n  archlab {command}" in out


@pytest.mark.parametrize("name", list(BENCHES))
def test_every_bench_has_help(name, capsys):
    out = help_page(["bench", name], capsys)
    assert out.startswith(f"usage: archlab bench {name}") and "examples:" in out


def test_bench_modes_have_their_own_pages(capsys):
    train, gen, both = (help_page(["bench", m], capsys) for m in ("train", "generate", "all"))
    assert len({train, gen, both}) == 3
    assert "--breakdown" in train and "--new-tokens" not in train
    assert "--new-tokens" in gen and "--breakdown" not in gen and "--compile" not in gen
    assert "--breakdown" in both and "--new-tokens" in both
    assert "--mode" not in train + gen + both  # the subcommand is the mode


def test_help_shows_defaults_and_explains_flags(capsys):
    out = " ".join(help_page(["generate"], capsys).split())  # argparse wraps lines
    for flag, default in [("--max-new-tokens", "200"), ("--temperature", "0.8"), ("--seed", "0")]:
        assert f"(default: {default})" in out.split(flag, 2)[2].split("--", 1)[0], flag
    for flag in ("--prompt", "--top-k", "--top-p", "--stop"):
        assert out.split(flag, 2)[2].split("--", 1)[0].strip(), flag
    assert "(default: 16)" in " ".join(help_page(["eval"], capsys).split())
    assert "(default: runs/quick)" in help_page(["demo"], capsys)


# ----------------------------------------------------------------------------- escapes, generate


def test_unescape():
    assert unescape(r"\n\n") == "\n\n"
    assert unescape(r"a\tb\r\nc") == "a\tb\r\nc"
    assert unescape(r"\\n") == "\\n"  # an escaped backslash, then a plain n
    assert unescape(r"C:\path\x") == r"C:\path\x"  # other backslashes stay
    assert unescape("no escapes") == "no escapes"


def test_generate_unescapes_prompt_and_stop(run_dir, monkeypatch, capsys):
    seen = {}
    real = archlab.models.generate

    def spy(model, ids, **kw):
        seen["ids"], seen["stop"] = ids[0].tolist(), kw["stop"]
        return real(model, ids, **kw)

    monkeypatch.setattr(archlab.models, "generate", spy)
    assert main(["generate", str(run_dir), "--prompt", r"a\nb", "--stop", r"\n\n", "--stop", r"\t",
                 "--max-new-tokens", "3", "--temperature", "0"]) == 0
    assert seen["ids"] == list(b"a\nb") and seen["stop"] == [[10, 10], [9]]
    assert capsys.readouterr().out.startswith("a\nb")


@pytest.mark.parametrize("flag, value", [
    ("--top-p", "0"), ("--top-p", "1.5"), ("--top-p", "nan"), ("--top-p", "-0.1"),
    ("--top-k", "0"), ("--top-k", "-2"),
    ("--temperature", "-1"), ("--temperature", "nan"), ("--temperature", "inf"),
    ("--max-new-tokens", "-1"),
])
def test_generate_refuses_bad_sampling_flags_before_loading(flag, value, capsys):
    # the run does not exist: the flag is refused first, without opening anything
    assert main(["generate", "/nonexistent/run", "--prompt", "x", flag, value]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"archlab: error: {flag}:") and value in line


def test_generate_refuses_empty_prompt_and_stop(capsys):
    assert main(["generate", "/nonexistent/run", "--prompt", ""]) == 2
    assert "--prompt" in one_error_line(capsys)
    assert main(["generate", "/nonexistent/run", "--prompt", "x", "--stop", ""]) == 2
    assert "--stop" in one_error_line(capsys)


def test_generate_zero_new_tokens_prints_the_prompt(run_dir, capsys):
    assert main(["generate", str(run_dir), "--prompt", "def ", "--max-new-tokens", "0"]) == 0
    assert capsys.readouterr().out == "def \n"


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return build_model(make_tiny_config().model).eval()


@pytest.mark.parametrize("kw, needle", [
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.01}, "top_p"), ({"top_p": math.nan}, "top_p"),
    ({"top_k": 0}, "top_k"), ({"temperature": -0.5}, "temperature"), ({"temperature": math.nan}, "temperature"),
    ({"temperature": math.inf}, "temperature"), ({"max_new_tokens": -1}, "max_new_tokens"),
])
def test_generate_api_refuses_bad_settings(lm, kw, needle, monkeypatch):
    monkeypatch.setattr(lm, "forward", lambda *a, **k: pytest.fail("compute before the check"))
    with pytest.raises(ConfigError, match=needle) as e:
        generate(lm, torch.zeros(1, 2, dtype=torch.long), **{"max_new_tokens": 3, **kw})
    assert "\n" not in str(e.value)


def test_generate_accepts_the_edges(lm):
    ids = torch.zeros(1, 2, dtype=torch.long)
    greedy = generate(lm, ids, max_new_tokens=4, temperature=0.0)
    g = torch.Generator().manual_seed(0)
    # top_p 1 and a top_k beyond the vocabulary filter nothing; top_k 1 is greedy
    assert generate(lm, ids, max_new_tokens=4, temperature=1.0, top_p=1.0, top_k=10_000, generator=g).shape == (1, 6)
    assert torch.equal(generate(lm, ids, max_new_tokens=4, temperature=1.0, top_k=1, generator=g), greedy)
    assert torch.equal(generate(lm, ids, max_new_tokens=0), ids)


def test_huge_max_new_tokens_is_not_preallocated(lm):
    ids = torch.zeros(1, 3, dtype=torch.long)
    first = generate(lm, ids, max_new_tokens=1, temperature=0.0)[0, -1].item()
    # 10**9 tokens of int64 would be 8 GB (and the fast decoder's caches far more): this must
    # stop at once on the first token instead
    for kw in ({}, {"fast_path": False}, {"use_cache": False}):
        out = generate(lm, ids, max_new_tokens=10**9, temperature=0.0, stop=[[first]], **kw)
        assert out.shape == (1, 4)


@pytest.mark.parametrize("kw", [{}, {"fast_path": False}, {"use_cache": False}])
def test_buffers_grow_without_changing_the_result(kw, monkeypatch):
    model = build_model(make_tiny_config().model).double().eval()
    ids = torch.randint(0, 256, (2, 3), generator=torch.Generator().manual_seed(1))
    whole = generate(model, ids, max_new_tokens=40, temperature=0.0, **kw)
    monkeypatch.setattr(generation, "FIRST_CHUNK", 4)  # 4, 8, 16, 32, 40: four regrowths
    assert torch.equal(generate(model, ids, max_new_tokens=40, temperature=0.0, **kw), whole)


def record_logits(monkeypatch) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    real = generation.next_token

    def spy(logits, **kw):
        seen.append(logits.clone())
        return real(logits, **kw)

    monkeypatch.setattr(generation, "next_token", spy)
    return seen


@pytest.mark.parametrize("kind", ["learned", "learned_sinusoidal"])
@pytest.mark.parametrize("kw", [{}, {"fast_path": False}, {"use_cache": False}])
def test_bounded_positions_crop_the_context(kind, kw, monkeypatch):
    L = 16
    torch.manual_seed(0)
    model = build_model(make_tiny_config(f"model.position.kind={kind}", f"model.max_seq_len={L}",
                                         f"train.seq_len={L}").model).double().eval()
    assert generation.context_limit(model) == L
    ids = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(2))
    seen = record_logits(monkeypatch)
    out = generate(model, ids, max_new_tokens=3 * L, temperature=0.0, **kw)
    assert out.shape == (2, 5 + 3 * L) and len(seen) == 3 * L
    with torch.no_grad():
        for i, logits in enumerate(seen):
            n = 5 + i  # tokens in context at this step
            fresh = model(out[:, max(0, n - L):n]).logits[:, -1]
            assert torch.allclose(logits, fresh, atol=1e-10), i


def test_prompt_longer_than_the_table_is_cropped(monkeypatch):
    L = 8
    torch.manual_seed(0)
    model = build_model(make_tiny_config("model.position.kind=learned", f"model.max_seq_len={L}",
                                         f"train.seq_len={L}").model).double().eval()
    ids = torch.randint(0, 256, (1, 3 * L), generator=torch.Generator().manual_seed(3))
    seen = record_logits(monkeypatch)
    out = generate(model, ids, max_new_tokens=2, temperature=0.0)
    with torch.no_grad():
        assert torch.allclose(seen[0], model(ids[:, -L:]).logits[:, -1], atol=1e-10)
    assert torch.equal(out[:, :3 * L], ids)


def test_unbounded_positions_have_no_limit(lm):
    assert generation.context_limit(lm) is None  # rope: nothing to crop


def test_unknown_task_word_names_it_and_a_few_allowed():
    words = [f"w{i}" for i in range(200)] + ["count"]
    tok = WordTokenizer(words, task="counting")
    with pytest.raises(ConfigError) as e:
        tok.encode("w1 cont w2")
    msg = str(e.value)
    assert "\n" not in msg and "'cont'" in msg and "count" in msg.split("allowed:")[1].split()[:3]
    assert "201 words in all" in msg and len(msg) < 200
    small = WordTokenizer(["a", "b"], task="t")
    with pytest.raises(ConfigError, match="allowed: a b$"):
        small.encode("c")


def test_argparse_mistakes_are_one_line(capsys):
    """argparse's own errors (bad type, missing flag, unknown option, unknown command) come
    out in the house format: one ``archlab: error:`` line and exit 2, not a usage block."""
    for argv in (["generate", "run", "--prompt", "x", "--top-k", "abc"], ["generate", "run"],
                 ["eval", "run", "--bogus"], ["nonsense"], ["bench", "train", "--rounds", "x"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("archlab: error:"), (argv, err)
