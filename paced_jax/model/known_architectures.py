"""Shapes of the published checkpoints the presets name, for use without the checkpoints
(ahead-of-time compilation in aot.py, benchmarks on random weights in bench/gpu.py)."""

from __future__ import annotations

from typing import Any

# Hugging Face config.json fields of the published checkpoints (their model cards / config.json),
# plus `tokenizer_vocab` (len(tokenizer); embedding rows beyond it are padding) and the parameter
# count the model card states, which tests compare our shapes against.
KNOWN_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "Qwen3-1.7B": dict(
        model_type="qwen3", hidden_size=2048, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, intermediate_size=6144, vocab_size=151936,
        tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=40960,
        eos_token_id=151645, tokenizer_vocab=151669, published_params=1.7e9),
    "Qwen3-8B": dict(
        model_type="qwen3", hidden_size=4096, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, intermediate_size=12288, vocab_size=151936,
        tie_word_embeddings=False, rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=40960,
        eos_token_id=151645, tokenizer_vocab=151669, published_params=8.2e9),
    "Qwen2.5-Math-7B": dict(
        model_type="qwen2", hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False,
        rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=4096, eos_token_id=151645,
        tokenizer_vocab=151665, published_params=7.61e9),
    "Llama-3.1-8B": dict(
        model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, intermediate_size=14336, vocab_size=128256,
        tie_word_embeddings=False, rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=131072,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
        bos_token_id=128000, eos_token_id=[128001, 128008, 128009], tokenizer_vocab=128256,
        published_params=8.03e9),
    "Llama-3.3-70B": dict(
        model_type="llama", hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
        num_key_value_heads=8, head_dim=128, intermediate_size=28672, vocab_size=128256,
        tie_word_embeddings=False, rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=131072,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
        bos_token_id=128000, eos_token_id=[128001, 128008, 128009], tokenizer_vocab=128256,
        published_params=70.6e9),
    "SmolLM2-135M": dict(
        model_type="llama", hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True,
        rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192, bos_token_id=1,
        eos_token_id=2, tokenizer_vocab=49152, published_params=135e6),
}
# Fine-tunes share their base model's shapes; a directory name is matched after these suffixes go.
