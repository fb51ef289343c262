"""The pool's cold loader reads checkpoints eagerly yet builds exactly what from_pretrained builds."""

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from workers.cold_read import EagerReader, checkpoint_files
from workers.weights import load_cold


def assert_same_model(model, ref):
    a, b = model.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    buffers, ref_buffers = dict(model.named_buffers()), dict(ref.named_buffers())
    assert all(torch.equal(buffers[n], ref_buffers[n]) for n in buffers)  # non-persistent ones too
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)


def test_cold_load_equals_from_pretrained_in_both_dtypes(zoo_dir):
    path = str(zoo_dir / "mux-2m")
    for dtype in (torch.float32, torch.bfloat16):
        model = load_cold(path, dtype, "cpu")
        ref = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        assert_same_model(model, ref)
        assert model.generation_config.eos_token_id == ref.generation_config.eos_token_id
        assert model.name_or_path == path


def test_sharded_checkpoint_with_tied_embeddings(tmp_path):
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, max_position_embeddings=64, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path, max_shard_size="100KB")
    files = checkpoint_files(tmp_path)
    assert len(files) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    model = load_cold(str(tmp_path), torch.float32, "cpu")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert_same_model(model, AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32))


def test_reader_views_stay_valid_after_the_reader_is_gone(zoo_dir):
    reader = EagerReader(checkpoint_files(zoo_dir / "mux-2m"))
    tensors = reader.state_dict()
    reader.wait()
    expected = {k: v.clone() for k, v in tensors.items()}
    del reader
    tensors["model.norm.weight"].add_(1.0)  # copy-on-write: the file is never written
    again = EagerReader(checkpoint_files(zoo_dir / "mux-2m")).state_dict()
    assert torch.equal(again["model.norm.weight"], expected["model.norm.weight"])
    assert all(torch.equal(tensors[k], expected[k]) for k in expected if k != "model.norm.weight")
