"""The offline demo model zoo: small Llama-style causal LMs with random weights.

Every model is written as an ordinary Hugging Face checkpoint directory (config.json,
model.safetensors, tokenizer.json, a chat template), so the pool loads it through the same
`AutoModelForCausalLM` / `AutoTokenizer` path that loads a real checkpoint a user points at.
Nothing is downloaded: the BPE tokenizer is trained here on a corpus shipped in the repo,
and weights come from a fixed seed, so two builds give identical files.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).parent / "zoo_data" / "corpus.txt"
VOCAB_SIZE = 4096
CONTEXT_LENGTH = 2048
COMPLETE_MARKER = ".muxgate-zoo-complete"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class ZooModel:
    """Shape of one demo model; `seed` makes its random weights reproducible."""

    name: str
    hidden: int
    layers: int
    heads: int
    intermediate: int
    seed: int
    # The speculative-decoding demo pair (see QUIET_SCALE): a target whose layers from `quiet_from`
    # on write little into the residual stream, and a draft that is the target's first `layers`
    # layers (`draft_of`), with the same embeddings, head and tokenizer.
    quiet_from: int | None = None
    draft_of: str | None = None

    def parameter_count(self) -> int:
        per_layer = 4 * self.hidden * self.hidden + 3 * self.hidden * self.intermediate + 2 * self.hidden
        return 2 * VOCAB_SIZE * self.hidden + self.layers * per_layer + self.hidden


# Six sizes from ~2M to ~120M parameters, plus variants of the same shapes (different seeds)
# so multiplexing benchmarks have a dozen distinct models of mixed sizes besides the largest.
ZOO: tuple[ZooModel, ...] = (
    ZooModel("mux-2m", 128, 4, 4, 512, seed=1),
    ZooModel("mux-5m", 256, 4, 4, 688, seed=2),
    ZooModel("mux-10m", 256, 10, 4, 688, seed=3),
    ZooModel("mux-20m", 384, 10, 6, 1024, seed=4),
    ZooModel("mux-50m", 512, 14, 8, 1408, seed=5),
    ZooModel("mux-120m", 768, 16, 12, 2048, seed=6),
    ZooModel("mux-2m-b", 128, 4, 4, 512, seed=11),
    ZooModel("mux-5m-b", 256, 4, 4, 688, seed=12),
    ZooModel("mux-5m-c", 256, 4, 4, 688, seed=13),
    ZooModel("mux-10m-b", 256, 10, 4, 688, seed=14),
    ZooModel("mux-10m-c", 256, 10, 4, 688, seed=17),
    ZooModel("mux-20m-b", 384, 10, 6, 1024, seed=15),
    ZooModel("mux-50m-b", 512, 14, 8, 1408, seed=16),
    ZooModel("mux-40m", 512, 12, 8, 1408, seed=21, quiet_from=2),
    ZooModel("mux-40m-draft", 512, 2, 8, 1408, seed=21, draft_of="mux-40m"),
)
ZOO_BY_NAME = {m.name: m for m in ZOO}

# Random models agree on nothing, so no small random model could draft for a large one. A trained
# draft agrees with its target on most tokens because the target's later layers mostly refine
# what its early layers already predict; the demo pair imitates that by scaling the output
# projections of the target's later layers by this factor. Its draft (the first two layers)
# then predicts the target's greedy token ~65% of the time on the shipped corpus (a trained draft's
# rate depends on the pair and the text; the bench prints the rate it measured).
QUIET_SCALE = 0.03


def train_tokenizer():
    """A byte-level BPE tokenizer trained on the shipped corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.read_text(encoding="utf-8").split("\n\n"), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=CONTEXT_LENGTH,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _llama_config(spec: ZooModel, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=CONTEXT_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )


def build_model(spec: ZooModel, tokenizer, out_dir: Path) -> Path:
    """Write one checkpoint directory. Built on the meta device, then filled from the seed:
    random init through nn.Module constructors is what makes large models slow to build."""
    import torch
    from transformers import LlamaForCausalLM

    if spec.draft_of is not None:
        # the draft is the target's first layers: build the target's weights and keep those
        target = _random_model(ZOO_BY_NAME[spec.draft_of], tokenizer)
        with torch.device("meta"):
            model = LlamaForCausalLM(_llama_config(spec, tokenizer))
        model.load_state_dict(target.state_dict(), strict=False, assign=True)
    else:
        model = _random_model(spec, tokenizer)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / COMPLETE_MARKER).write_text(json.dumps({"seed": spec.seed, "parameters": spec.parameter_count()}))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)  # atomic: a crash mid-build never leaves a half-written model behind
    return out_dir


def _random_model(spec: ZooModel, tokenizer):
    """The model's weights from its seed, on the CPU."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(_llama_config(spec, tokenizer))
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=gen)
        if spec.quiet_from is not None:
            for layer in model.model.layers[spec.quiet_from:]:
                layer.self_attn.o_proj.weight.mul_(QUIET_SCALE)
                layer.mlp.down_proj.weight.mul_(QUIET_SCALE)
    return model


def is_built(model_dir: Path) -> bool:
    return (model_dir / COMPLETE_MARKER).exists()


def build_zoo(out: Path, names: list[str] | None = None, progress: bool = True) -> list[Path]:
    """Build every missing zoo model (or just `names`) under `out`; returns their directories."""
    from tqdm import tqdm

    unknown = [n for n in names or [] if n not in ZOO_BY_NAME]
    if unknown:
        raise ValueError(f"unknown zoo models: {', '.join(unknown)}; known: {', '.join(ZOO_BY_NAME)}")
    specs = [ZOO_BY_NAME[n] for n in names] if names else list(ZOO)
    todo = [s for s in specs if not is_built(out / s.name)]
    if todo:
        out.mkdir(parents=True, exist_ok=True)
        tokenizer = train_tokenizer()
        bar = tqdm(todo, desc="building demo zoo", unit="model", disable=not progress)
        for spec in bar:
            bar.set_postfix_str(f"{spec.name} ({spec.parameter_count() / 1e6:.0f}M params)")
            build_model(spec, tokenizer, out / spec.name)
    return [out / s.name for s in specs]
