"""The host tier's flat copy and the swap-in that refills a retired model from it."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from workers.weights import copy_to_host, load_warm, tensor_bytes, to_shell


@pytest.fixture
def tied_model_dir(tmp_path):
    # tied embeddings: the head and the embedding are one Parameter, which a swap must keep shared
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(tmp_path)
    return tmp_path, model


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_host_copy_is_one_buffer_holding_every_tensor(tied_model_dir):
    _, model = tied_model_dir
    host = copy_to_host(model, pin=False)
    assert host.flat.numel() == host.nbytes >= tensor_bytes(model)
    ptrs = {t.untyped_storage().data_ptr() for t in host.tensors.values()}
    assert ptrs == {host.flat.untyped_storage().data_ptr()}


def test_a_retired_model_is_refilled_with_identical_weights_and_ties_kept(tied_model_dir):
    path, model = tied_model_dir
    ids = [3, 14, 15, 92, 65]
    want = logits(model, ids)
    host = copy_to_host(model, pin=False)
    shell = to_shell(model)
    assert all(t.device.type == "meta" for t in shell.parameters())  # its memory is released
    host.shell = shell

    back = load_warm(str(path), torch.float32, "cpu", host)
    assert back is shell and host.shell is None  # the kept object, refilled: nothing was built
    assert back.lm_head.weight is back.model.embed_tokens.weight
    assert torch.equal(logits(back, ids), want)

    host.shell = to_shell(back)  # and again, as every later eviction and swap-in does
    again = load_warm(str(path), torch.float32, "cpu", host)
    assert torch.equal(logits(again, ids), want)
    # the host copy is not shared with the resident model: writing one leaves the other alone
    again.lm_head.weight.data.zero_()
    assert torch.equal(logits(load_warm(str(path), torch.float32, "cpu", host), ids), want)


def test_without_a_kept_object_a_skeleton_is_built(tied_model_dir):
    path, model = tied_model_dir
    host = copy_to_host(model, pin=False)
    back = load_warm(str(path), torch.float32, "cpu", host)
    assert back is not model and back.lm_head.weight is back.model.embed_tokens.weight
    assert torch.equal(logits(back, [1, 2, 3]), logits(model, [1, 2, 3]))


def test_a_host_copy_of_another_architecture_is_refused(tied_model_dir, tmp_path_factory):
    path, model = tied_model_dir
    other = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True))
    with pytest.raises(ValueError, match="do not match"):
        load_warm(str(path), torch.float32, "cpu", copy_to_host(other, pin=False))


def test_concurrent_loads_keep_every_tied_model_tied(tmp_path):
    """transformers disables `tie_weights` (a class attribute) and swaps torch's default dtype while it
    builds a model; overlapping builds in several loader threads restored each other's swapped
    state and left tying off for the whole process: every later model with tied embeddings got a
    random head. The pool's loads overlap, so the builds must not."""
    import threading

    from transformers import PreTrainedModel

    from workers.weights import load_cold

    tie_weights = PreTrainedModel.tie_weights
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "tied")
    untied, errors = [], []

    def load(dtype):
        try:
            for _ in range(6):
                model = load_cold(str(tmp_path / "tied"), dtype, "cpu")
                if model.lm_head.weight is not model.model.embed_tokens.weight or model.dtype != dtype:
                    untied.append(model.dtype)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(d,)) for d in [torch.float32, torch.bfloat16] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not untied
    assert PreTrainedModel.tie_weights is tie_weights
    fresh = AutoModelForCausalLM.from_config(config)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
