import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

from tokencredit.models import (
    build_char_tokenizer,
    count_parameters,
    create_tiny_model,
    load_model,
    tiny_llama_config,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return create_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


def test_default_size():
    config = tiny_llama_config(len(build_char_tokenizer()))
    model = LlamaForCausalLM(config)
    assert 500_000 <= count_parameters(model) <= 2_000_000
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 1, 2)


def test_invalid_heads():
    with pytest.raises(ValueError, match="heads"):
        tiny_llama_config(10, hidden_size=128, heads=3)


def test_folder_loads_with_auto_classes(tiny_dir):
    assert (tiny_dir / "config.json").is_file() and (tiny_dir / "tokenizer.json").is_file()
    tok = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True)
    assert isinstance(model, LlamaForCausalLM)
    assert tok.decode(tok("1+2=3\nanswer: 3")["input_ids"]) == "1+2=3\nanswer: 3"
    assert model.config.vocab_size == len(tok) and model.config.eos_token_id == tok.eos_token_id


def test_roundtrip_gives_identical_logits(tmp_path, tiny_dir):
    model, tok = load_model(tiny_dir)
    ids = torch.tensor([tok("3+5+2=")["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits
    model.save_pretrained(tmp_path / "again")
    tok.save_pretrained(tmp_path / "again")
    again, _ = load_model(tmp_path / "again")
    with torch.no_grad():
        assert torch.equal(again(ids).logits, logits)
    assert not model.training and next(model.parameters()).dtype == torch.float32


def test_seed_controls_init_and_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    small = {"hidden_size": 32, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate": 64}
    a, _ = load_model(create_tiny_model(tmp_path / "a", seed=1, **small))
    b, _ = load_model(create_tiny_model(tmp_path / "b", seed=1, **small))
    c, _ = load_model(create_tiny_model(tmp_path / "c", seed=2, **small))
    assert torch.rand(1).item() == expected.item()
    wa, wb, wc = (m.model.embed_tokens.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.config.hidden_size == 32


def test_generate_greedy_with_left_padding(tiny_dir):
    model, tok = load_model(tiny_dir)
    prompts = ["3+5+2=", "7+1="]
    batch = tok(prompts, return_tensors="pt", padding=True)
    assert batch["attention_mask"][1, 0] == 0  # the shorter prompt is padded on the left
    greedy = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}
    with torch.no_grad():
        out = model.generate(**batch, **greedy)
        alone = model.generate(**tok(prompts[1:], return_tensors="pt"), **greedy)
    width = batch["input_ids"].shape[1]
    assert out.shape == (2, width + 5) and torch.equal(out[:, :width], batch["input_ids"])
    assert torch.equal(out[1, width:], alone[0, 4:])  # left padding does not change the continuation


def test_load_other_architecture(tmp_path):
    """`load_model` takes any local causal-LM folder: here GPT-2 with a char tokenizer lacking a pad id."""
    tok = build_char_tokenizer("0123456789+= \n")
    config = GPT2Config(
        vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2, eos_token_id=tok.eos_token_id
    )
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, loaded = load_model(tmp_path)
    assert isinstance(model, GPT2LMHeadModel)
    assert model.generation_config.pad_token_id is not None
    batch = loaded(["1+2=", "13+4="], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 2


def test_load_model_dtype(tiny_dir):
    model, _ = load_model(tiny_dir, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_load_model_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_model(tmp_path / "nowhere")
