"""hf_rgtg inside other inference engines. Each engine has its own subpackage, imported only when asked for:
`import hf_rgtg` never imports an engine.

- [`vllm`][hf_rgtg.integrations.vllm]: reward-guided decoding as a vLLM logits processor.
"""
