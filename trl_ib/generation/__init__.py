"""Sampling completions for Pass@k^(m): transformers' `generate` (`hf_generation`), vLLM (`vllm_generation`), the
sampling settings they share (`sampling`) and the prompt formats with the programs built from answers (`prompting`).
"""
