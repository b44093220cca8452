"""Tiny, randomly initialised models built offline, for tests and benchmarks that need speed.

They are real transformers checkpoints (Llama architecture, byte-level BPE tokenizer with a chat
template), so every code path that loads a model by path runs unchanged on them.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Human: how do I bake bread? Assistant: Mix flour, water, salt and yeast, then knead and bake.",
    "A preference pair has a prompt, a chosen answer and a rejected answer.",
    "Please explain why the sky is blue in simple words.",
    "Score: 1 2 3 4 5. The response is helpful, harmless, honest and clear.",
] * 20


def build_tiny_llama(path: str | Path, *, seed: int = 0, hidden: int = 32, layers: int = 2,
                     vocab: int = 512) -> Path:
    """Write a tiny random Llama + tokenizer to `path` (idempotent) and return the path."""
    path = Path(path)
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_CORPUS, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, bos_token_id=fast.bos_token_id,
                      eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """Run the real `prefdata` CLI in-process, as tests do: (exit code, stdout, stderr).

    `capsys` is pytest's capture fixture; a SystemExit without a code counts as success."""
    from prefdata.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err
